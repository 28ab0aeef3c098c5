"""`python -m gptcore`: the `gptcore` command, or with `--include`, `--library` or `--cmake-dir` the
path an embedder builds against (answered before the command's torch-heavy imports)."""

import sys

from gptcore.native import FLAGS, print_path

if sys.argv[1:2] and sys.argv[1] in FLAGS:
    sys.exit(print_path(sys.argv[1]))

from gptcore.cli import main  # noqa: E402

sys.exit(main())

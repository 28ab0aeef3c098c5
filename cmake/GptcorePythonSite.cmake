# GPTCORE_PYTHON_SITE_DIRS: the folders where the Python environment keeps packages, for the
# libraries gptcore takes from wheels (nvidia-cublas, nvidia-nccl-cu13, scipy-openblas32).
# sys.path comes first: under pip's isolated build the build requirements sit on an overlay
# that only sys.path names; the interpreter's site-packages follow.
# -DGPTCORE_PYTHON_SITE_DIRS=<dirs> names the folders instead (a build against chosen wheels).
if(NOT DEFINED GPTCORE_PYTHON_SITE_DIRS)
  set(GPTCORE_PYTHON_SITE_DIRS "")
  if(Python_EXECUTABLE)
    execute_process(
      COMMAND "${Python_EXECUTABLE}" -c
        "import site, sys, sysconfig; print(';'.join([p for p in sys.path if p] + [sysconfig.get_paths()['purelib'], sysconfig.get_paths()['platlib']] + site.getsitepackages()))"
      OUTPUT_VARIABLE GPTCORE_PYTHON_SITE_DIRS OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
    list(REMOVE_DUPLICATES GPTCORE_PYTHON_SITE_DIRS)
  endif()
endif()

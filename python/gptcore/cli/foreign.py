"""Megatron-LM's and PaddleNLP's flags on `gptcore train` / `gptcore finetune`: `--max_steps 10`
runs as `train_steps=10` and the command says so, one line each, so users learn gptcore's keys
(the table: gptcore.training.aliases). Foreign `key=value` names (`max_steps=10`) likewise."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

from gptcore.training import ConfigError, TrainConfig
from gptcore.training.aliases import ALIASES, FLAG_ALIASES, IGNORED, Alias, normalize, suggestion
from gptcore.training.config import config_values, device_name

KEYS = [f.name for f in fields(TrainConfig)]
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


@dataclass
class Translation:
    """One foreign setting as gptcore's: `said` is what the user typed, `key`/`value` what it becomes
    (key None: ignored); `accumulation` is set for gradient_accumulation_steps, whose global batch
    needs the run's micro batch and data-parallel size (translate_run works it out)."""

    said: str
    key: str | None
    value: object = None
    accumulation: int | None = None

    def line(self) -> str:
        if self.key is None:
            return f"{self.said}: ignored (gptcore does this anyway)"
        return f"{self.said} -> {self.key}={_text(self.value)}"


def _text(value) -> str:
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _scalar(text: str):
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return text if isinstance(value, dict | list) else value


def translate(name: str, values: list[str], flag: bool) -> Translation:
    """The translation of `--name v...` (flag) or `name=v` (not a flag: gptcore's own keys are not
    foreign then); ConfigError naming gptcore's key when the value has no counterpart."""
    said = f"--{name} {' '.join(values)}".rstrip() if flag else f"{name}={' '.join(values)}"
    norm = normalize(name)
    alias = (FLAG_ALIASES.get(norm) if flag else None) or ALIASES.get(norm)
    if flag and norm in IGNORED:
        return Translation(said, None)
    if alias is None and flag and norm in KEYS:
        alias = Alias(norm, "gptcore")
    if alias is None:
        hint = suggestion(name, KEYS)
        if flag and not hint.startswith("did you mean"):
            hint = "settings are key=value (README: Training), or the Megatron-LM / PaddleNLP flags of its table"
        raise ConfigError(f"unknown {'option' if flag else 'config key'} {f'--{name}' if flag else name!r}; {hint}")
    text = " ".join(values)
    if alias.switch:
        if text.lower() not in ("", *TRUE, *FALSE):
            raise ConfigError(f"{said}: give true or false (or the bare flag); it sets {alias.key}")
        return Translation(said, alias.key, alias.off if text.lower() in FALSE else alias.on)
    if not values:
        if norm in KEYS and _is_bool(norm):
            return Translation(said, norm, True)
        raise ConfigError(f"{said}: needs a value (it sets {alias.key})")
    if alias.values is not None:
        value = alias.values.get(text.lower().replace("-", "_"))
        if value is None:
            raise ConfigError(
                f"{said}: gptcore's {alias.key} has no {text!r}; it takes {', '.join(map(str, alias.values))}"
                f" ({alias.key}={'|'.join(dict.fromkeys(map(str, alias.values.values())))})"
            )
        return Translation(said, alias.key, value)
    value = text if alias.key == "data_path" else _scalar(text)
    if alias.key == "device":
        value = device_name(text)
    if norm == "gradient_accumulation_steps":
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{said}: give a whole number of steps >= 1")
        return Translation(said, alias.key, None, accumulation=value)
    return Translation(said, alias.key, value)


def _is_bool(key: str) -> bool:
    return TrainConfig.__dataclass_fields__[key].type in ("bool", "bool | None")


def split_flags(tokens: list[str], known: dict[str, int]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(the other tokens, the foreign flags as (name, values)): a flag takes the tokens after it up to
    the next flag or key=value (`--data-path 0.3 A 0.7 B`); `--name=value` is one flag. known: the
    command's own options and how many values each takes; they stay among the other tokens."""
    options: list[str] = []  # the command's own, first: argparse takes key=value only as one run
    rest: list[str] = []
    flags: list[tuple[str, list[str]]] = []
    taking = 0  # values still owed to the last known option
    open_flag = False  # the last token was a foreign flag or one of its values
    for token in tokens:
        if taking:
            options.append(token)
            taking -= 1
        elif token.startswith("--") and len(token) > 2:
            name, sep, value = token[2:].partition("=")
            option = "--" + name.replace("_", "-")  # torchrun's --nproc_per_node is --nproc-per-node
            if option in known:
                options.append(option + sep + value)
                taking, open_flag = 0 if sep else known[option], False
                continue
            flags.append((name, [value] if sep else []))
            open_flag = not sep
        elif open_flag and "=" not in token:
            flags[-1][1].append(token)
        else:
            rest.append(token)
            open_flag = False
    return options + rest, flags


def translate_run(config, overrides: list[str], flags: list[tuple[str, list[str]]], nproc: int, say) -> list[str]:
    """The overrides of a run given `overrides` (key=value, some maybe foreign) and foreign `flags`:
    the flags' translations first, then the overrides (gptcore's keys kept, foreign ones
    translated); `say` hears one line per translation. gradient_accumulation_steps becomes the
    global batch of the run's micro batch and data-parallel size (nproc / (tp x pp))."""
    translations = [translate(name, values, flag=True) for name, values in flags]
    out: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if sep and key.strip() not in KEYS and normalize(key.strip()) in ALIASES:
            translations.append(translate(key.strip(), [text], flag=False))
        else:
            out.append(item)
    head = [f"{t.key}={_text(t.value)}" for t in translations if t.key is not None and t.accumulation is None]
    for t in translations:
        if t.accumulation is not None:
            cfg = TrainConfig(**config_values(config, head + out))  # checked whole once translated
            data_parallel = max(1, nproc // (cfg.tensor_parallel * cfg.pipeline_parallel))
            t.value = t.accumulation * cfg.micro_batch_size * data_parallel
            t.said += f" (micro_batch_size {cfg.micro_batch_size} x {t.accumulation} x data parallel {data_parallel})"
            head.append(f"{t.key}={t.value}")
        say(t.line())
    return head + out


def report(line: str) -> None:
    print(f"gptcore: {line}", file=sys.stderr)

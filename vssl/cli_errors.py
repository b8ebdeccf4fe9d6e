"""One-line messages for mistakes in a ``fit``/``validate``/``test``/``predict`` command line.

jsonargparse reports a mistyped key, a value of the wrong type or an unknown class as a
many-line explanation of the Union it tried (``Does not validate against any of the Union
subtypes``, the subtypes, the given value), and a constructor's own error (an unknown
backbone, a bad setting) as the last of some 80 lines of traceback. These functions turn both
into one line that says where the mistake is (the config file and line, or the command line
option), what is wrong, and the closest valid name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Sequence
from importlib import import_module
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from vssl.errors import UserError

_VSSL_DIR = str(Path(__file__).resolve().parent)

#: Options whose value is a config file for the whole command (``--config``) or for one group.
_CONFIG_OPTIONS = ("--config", "-c")


def close_match(word: str, choices: Sequence[str]) -> str | None:
    """The choice most like ``word`` (difflib's ratio of at least 0.6), or None."""
    found = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _did_you_mean(word: str, choices: Sequence[str], quote: bool = True) -> str:
    match = close_match(word, choices)
    if match is None:
        return ""
    return f"; did you mean {match!r}?" if quote else f"; did you mean {match}?"


def config_files(argv: Sequence[str]) -> list[tuple[str | None, str]]:
    """The config files in ``argv`` as ``(group, path)``: group None for ``--config FILE``,
    ``"model"`` for ``--model FILE`` (a file given for one group), in command line order."""
    files: list[tuple[str | None, str]] = []
    args = list(argv)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if not eq:
            value = args[i + 1] if i + 1 < len(args) else ""
        if not name.startswith("-") or not value:
            continue
        if name in _CONFIG_OPTIONS:
            files.append((None, value))
        elif (
            name.startswith("--") and "." not in name and value.endswith((".yaml", ".yml", ".json"))
        ):
            files.append((name[2:], value))
    return files


def _find_key(node: yaml.Node, parts: list[str]) -> yaml.Node | None:
    """The key node at ``parts`` under ``node``; ``init_args`` may be left out in the file (a
    class's arguments next to its ``class_path``) and lists are searched item by item."""
    if not parts:
        return node
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if (found := _find_key(item, parts)) is not None:
                return found
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    for key, value in node.value:
        if getattr(key, "value", None) == parts[0]:
            return key if len(parts) == 1 else _find_key(value, parts[1:])
    if parts[0] == "init_args":
        return _find_key(node, parts[1:])
    return None


def locate(key: str, argv: Sequence[str]) -> str:
    """Where ``key`` (``model.init_args.lr``) was given: ``FILE, line N`` of the last config
    file that sets it, else the command line option that does, else ``""``."""
    parts = key.split(".")
    short = [p for p in parts if p != "init_args"]
    for arg in argv:
        option = arg.partition("=")[0]
        if option.startswith("--") and option[2:].split(".") in (parts, short):
            return option
    for group, path in reversed(config_files(argv)):
        sub = parts if group is None else parts[1:] if parts[0] == group else None
        if sub is None:
            continue
        try:
            root = yaml.compose(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        found = _find_key(root, sub) if root is not None else None
        if found is not None:
            return f"{path}, line {found.start_mark.line + 1}"
    return ""


def _options_of(class_path: str) -> list[str]:
    """The init arguments jsonargparse accepts for ``class_path`` (empty if it cannot say)."""
    from jsonargparse import ArgumentParser

    try:
        module, _, name = class_path.rpartition(".")
        cls = getattr(import_module(module), name)
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, fail_untyped=False)
    except Exception:  # noqa: BLE001 - only a hint is lost
        return []
    return [a.dest for a in parser._actions if a.dest != "help"]


def _class_hint(class_path: str) -> str:
    """``; did you mean 'vssl.tasks.Supervised'?`` for a mistyped class path."""
    module, _, name = class_path.rpartition(".")
    try:
        names = [n for n in dir(import_module(module)) if not n.startswith("_")]
    except Exception:  # noqa: BLE001 - the module itself is mistyped; no hint
        return ""
    match = close_match(name, names)
    return f"; did you mean {module + '.' + match!r}?" if match else ""


def _expected(errors: list[str]) -> str:
    """``an int or null`` from jsonargparse's ``Expected a <class 'int'>`` lines."""
    types = []
    for error in errors:
        for found in re.findall(r"Expected an? <class '([\w.]+)'>", error):
            types.append("null" if found == "NoneType" else found)
    return " or ".join(dict.fromkeys(types))


def _union_errors(text: str) -> list[str]:
    """The ``- ...`` items under ``Errors:`` of a jsonargparse Union message."""
    block = text.split("Errors:", 1)[1] if "Errors:" in text else ""
    block = block.split("Given value type:", 1)[0]
    return [m.strip() for m in re.split(r"\n\s*- ", "\n" + block) if m.strip()]


def _with_place(place: str, key: str, problem: str) -> str:
    if place.startswith("--"):
        return f"{place}: {problem}"
    return f"{place}: {key}: {problem}" if place else f"{key}: {problem}"


def explain_parse_error(message: str, argv: Sequence[str], options: Sequence[str]) -> str:
    """One line for a jsonargparse parse error ``message``; ``argv``: the subcommand's
    arguments (to find the file or option that holds the mistake), ``options``: the
    subcommand parser's option strings (for close matches)."""
    message = message.strip()
    unknown = re.match(r"unrecognized arguments: (\S+)", message)
    if unknown:
        option = unknown.group(1).partition("=")[0]
        group = option.split(".")[0] + "."
        same_group = [o for o in options if o.startswith(group)]
        hint = _did_you_mean(option, same_group or options, quote=False)
        return f"{option}: no such option{hint}"
    in_group = re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)
    not_accepted = re.match(
        r"(?:Subcommand '\w+' does not accept option|Option) '([\w.]+)'(?: is not accepted)?$",
        message,
    )
    if in_group or not_accepted:
        key = f"{in_group.group(1)}.{in_group.group(2)}" if in_group else not_accepted.group(1)  # type: ignore[union-attr]
        group, _, leaf = key.rpartition(".")
        prefix = f"--{group}." if group else "--"
        names = sorted({o[len(prefix) :].split(".")[0] for o in options if o.startswith(prefix)})
        return _with_place(locate(key, argv), key, f"no such option{_did_you_mean(leaf, names)}")
    if message.startswith("Problems parsing config") and len(config_files(argv)) == 1:
        path = config_files(argv)[0][1]
        return f"{path}: not valid YAML: {_condense(message.split(':', 1)[1], argv)}"
    keyed = re.match(r'Parser key "([\w.]+)":\s*(.*)', message, re.S)
    if not keyed:
        return _condense(message, argv)
    key, rest = keyed.groups()
    if key == "config":
        return f"--config: {_condense(rest, argv)}"
    problem = re.search(
        r"Problem with given class_path '([\w.]+)':\s*\n(.*?)(?=\n\s*- |\Z)", rest, re.S
    )
    if problem:
        class_path, inner = problem.group(1), problem.group(2).strip()
        not_accepted = re.match(r"Option '([\w.]+)' is not accepted", inner)
        if not_accepted:
            leaf = not_accepted.group(1)
            full = f"{key}.init_args.{leaf}"
            hint = _did_you_mean(leaf, _options_of(class_path))
            return _with_place(locate(full, argv), full, f"not an option of {class_path}{hint}")
        nested = re.match(r'Parser key "([\w.]+)":\s*(.*)', inner, re.S)
        if nested:
            full = f"{key}.init_args.{nested.group(1)}"
            detail = nested.group(2).strip()
            got = re.search(r"Got value: (.*)$", detail)
            expected = _expected([detail])
            text = (
                f"expected {expected}, got {got.group(1).strip()!r}"
                if expected and got
                else " ".join(detail.split())
            )
            return _with_place(locate(full, argv), full, text)
        if re.search(r"has no attribute|No module named|Import path", inner):
            full = f"{key}.class_path"
            text = f"{class_path!r} not found{_class_hint(class_path)}"
            return _with_place(locate(full, argv), full, text)
        return _with_place(locate(key, argv), key, f"{class_path}: {' '.join(inner.split())}")
    if "Does not validate against any of the Union subtypes" in rest:
        errors = _union_errors(rest)
        expected = _expected(errors)
        given = re.search(r"Given value: (.*)$", rest, re.M)
        if expected and given and len(_expected(errors[:1]).split(" or ")) == 1:
            text = f"expected {expected}, got {given.group(1).strip()!r}"
            return _with_place(locate(key, argv), key, text)
    return _with_place(locate(key, argv), key, _condense(rest, argv))


def _condense(text: str, argv: Sequence[str]) -> str:
    """jsonargparse's explanation on one line, without the Union's bookkeeping lines."""
    files = config_files(argv)
    if len(files) == 1:
        text = text.replace('"<unicode string>"', files[0][1])
    keep = [
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.strip().startswith(("Given value", "Subtypes:", "Errors:"))
        and "Expected a <class 'NoneType'>" not in line
    ]
    return " ".join(keep)


def _raised_in(err: BaseException) -> str:
    """The file of the frame that raised ``err``."""
    tb: TracebackType | None = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename if tb is not None else ""


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def user_error_in(err: BaseException) -> UserError | None:
    """The mistake in the user's settings behind an error raised while the CLI built the task,
    the datamodule, the callbacks or the trainer, as a `UserError`; None for a bug.

    A user's mistake is a `UserError`, a ValueError raised by vssl's own checks (an unknown
    backbone, a setting out of range), a TypeError of the backbone registry (a keyword its
    builder does not take) or Lightning's MisconfigurationException (an accelerator that is not
    there). Anything else keeps its traceback.
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    owner = re.search(r"class_path='([\w.]+)'", str(err))
    for cause in _chain(err):
        where = _raised_in(cause)
        mine = where.startswith(_VSSL_DIR) and not where.endswith("cli_errors.py")
        if (
            isinstance(cause, (UserError, MisconfigurationException))
            or (isinstance(cause, ValueError) and mine)
            or (isinstance(cause, TypeError) and where.endswith("registry.py") and mine)
        ):
            text = " ".join(str(cause).split()) or type(cause).__name__
            if owner and not isinstance(cause, UserError):
                text = f"{owner.group(1)}: {text}"
            return UserError(text)
    return None


def option_strings(parser: Any) -> list[str]:
    """Every ``--option`` of a parser (jsonargparse or argparse)."""
    return sorted(o for o in getattr(parser, "_option_string_actions", {}) if o.startswith("--"))


__all__ = [
    "close_match",
    "config_files",
    "explain_parse_error",
    "locate",
    "option_strings",
    "user_error_in",
]

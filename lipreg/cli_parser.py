"""``lipreg``'s argument parser: one-line errors with the closest valid option, and help without noise."""

import difflib
import importlib
import inspect
import re
import sys
from typing import Any, NoReturn

from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser

from lipreg.errors import LipregError

#: Lines of jsonargparse's union errors that repeat what the other lines say.
_NOISE = re.compile(
    r"^(Given value type:|Given value:|Subtypes:|Errors:|Does not validate against any of the Union subtypes|"
    r"Expected a <class 'NoneType'>)"
)


def class_options(class_path: str) -> list[str]:
    """The ``__init__`` options of a class and of the bases its ``**kwargs`` reach (jsonargparse's rule)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return []
    options: list[str] = []
    for klass in inspect.getmro(cls):
        if "__init__" not in vars(klass) or klass is object:
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        options += [p.name for p in parameters if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return list(dict.fromkeys(options))


def closest(name: str, candidates: list[str]) -> str | None:
    """The candidate closest to ``name`` (difflib), if any is close."""
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(message: str, options: list[str], argv: list[str]) -> str:
    """``did you mean …?`` for the misspelt option of an argument error, or ``""``."""
    unknown = re.search(r"[Uu]nrecognized arguments: (--[\w.\-]+)", message)
    if unknown:
        name = unknown.group(1)
        match = closest(name, options)
        return f"--{match.lstrip('-')}" if match else ""
    nested = re.search(r"Problem with given class_path '([\w.]+)'", message)
    key = re.search(r"NestedArg\(key='([\w.]+)'|Option '([\w.]+)' is not accepted|Key '([\w.]+)'", message)
    group = re.search(r'Parser key "([\w.]+)"', message)
    if nested and key and group:
        wrong = next(k for k in key.groups() if k)
        match = closest(wrong.rsplit(".", 1)[-1], class_options(nested.group(1)))
        if match:
            prefix = group.group(1)
            written = next((a for a in argv if a.startswith(f"--{prefix}.") and a.endswith(wrong)), "")
            init = ".init_args" if ".init_args." in written or not written else ""
            return f"--{prefix}{init}.{match}"
    return ""


def unaccepted_option(message: str) -> str | None:
    """``CLIP has no option 'lamm'`` for jsonargparse's report of an option a class does not take."""
    nested = re.search(r"Problem with given class_path '([\w.]+)'", message)
    key = re.search(r"Option '([\w.]+)' is not accepted|NestedArg\(key='([\w.]+)'", message)
    if nested and key:
        return f"{nested.group(1).rsplit('.', 1)[-1]} has no option '{next(k for k in key.groups() if k)}'"
    return None


def one_line(message: str) -> str:
    """jsonargparse's multi-line error as one line: the informative lines joined by ``; ``."""
    lines = [line.strip().lstrip("- ").strip() for line in message.splitlines()]
    kept = [line for line in lines if line and not _NOISE.match(line)]
    text = "; ".join(dict.fromkeys(kept))
    return re.sub(r":;", ":", text)


class LipRegHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with the network's list of every importable ``nn.Module`` cut to lipreg's own."""

    def _get_help_string(self, action: Any) -> str:
        text = super()._get_help_string(action)
        found = re.search(r", known subclasses: ([^)]*)", text)
        if found and "torch.nn.Module" in found.group(1).split(", "):
            own = [c for c in found.group(1).split(", ") if c.startswith("lipreg.nets.")]
            text = text.replace(found.group(0), f", e.g. {', '.join(own)}, or any torch.nn.Module by class_path")
        return text


class LipRegArgumentParser(LightningArgumentParser):
    """Argument errors end the process with ``lipreg: error: …`` and a pointer to ``--help``, not a usage
    dump; help (also the nested ``--model.help``) uses :class:`LipRegHelpFormatter`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", LipRegHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.replace(" [options]", "")
        options = list(parser._option_string_actions)
        hint = suggestion(message, options, sys.argv[1:])
        text = one_line(unaccepted_option(message) or message)
        if hint:
            text += f"; did you mean {hint}?"
        sys.stderr.write(f"lipreg: error: {text}\n(the options: {command} --help)\n")
        sys.exit(2)


def raise_from_chain(error: BaseException) -> None:
    """Re-raise the :class:`LipregError` that caused ``error`` (jsonargparse wraps the ones a class raises)."""
    seen = error
    while seen is not None:
        if isinstance(seen, LipregError):
            raise seen from None
        seen = seen.__cause__ or seen.__context__

"""``lipreg``'s argument parser: one-line errors with the closest valid option, and help without noise."""

import difflib
import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import yaml
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


def _value_after(words: list[str], option: str) -> str | None:
    """The value given to ``option`` on the command line (``--opt VALUE`` or ``--opt=VALUE``), the last one."""
    found = None
    for index, word in enumerate(words):
        if word == option and index + 1 < len(words):
            found = words[index + 1]
        elif word.startswith(f"{option}="):
            found = word.split("=", 1)[1]
    return found


def group_class(words: list[str], group: str) -> str | None:
    """The class path of a class-valued option group (``model``, ``data``, …): from the command line, else
    from the ``--config`` files, the last one that names it; short names resolve in ``lipreg.methods`` / ``data``."""
    named = _value_after(words, f"--{group}") or _value_after(words, f"--{group}.class_path")
    if named is None and "." not in group:
        for index, word in enumerate(words):
            path = words[index + 1] if word == "--config" and index + 1 < len(words) else None
            if path is None and word.startswith("--config="):
                path = word.split("=", 1)[1]
            try:
                config = yaml.safe_load(Path(path).read_text()) if path else None
            except (OSError, yaml.YAMLError):
                config = None
            section = config.get(group) if isinstance(config, dict) else None
            if isinstance(section, dict) and section.get("class_path"):
                named = str(section["class_path"])
    if named is None or "." in named:
        return named
    return {"model": f"lipreg.methods.{named}", "data": f"lipreg.data.{named}"}.get(group, named)


def misspelt_option(words: list[str], options: list[str]) -> tuple[str, str | None, str | None] | None:
    """The first option on the command line that the parser does not take: ``(as written, the closest valid
    option or None, the class that lacks it or None)``.

    Found from the command line, the parser's own option names and the classes' signatures (the
    ``init_args`` of a class-valued group such as ``--model``), not from the text of jsonargparse's
    error, which a jsonargparse release may reword.
    """
    known = set(options)
    for word in words:
        if not word.startswith("--"):
            continue
        written = word.split("=", 1)[0].removesuffix("+")  # --trainer.callbacks+=…
        if written in known:
            continue
        parts = written[2:].split(".")
        groups = [".".join(parts[:n]) for n in range(len(parts) - 1, 0, -1) if f"--{'.'.join(parts[:n])}.help" in known]
        if groups:  # inside a class-valued option (--model, --trainer.logger …): the class's signature says
            group = groups[0]
            rest = written[len(group) + 3 :]
            key = rest.removeprefix("init_args.")
            class_path = group_class(words, group)
            accepted = class_options(class_path) if class_path else []
            if "." in key or not accepted or key in accepted:
                continue  # deeper nesting or an unknown class: jsonargparse's own message stands
            match = closest(key, accepted)
            init = ".init_args" if rest.startswith("init_args.") else ""
            return written, (f"--{group}{init}.{match}" if match else None), class_path.rsplit(".", 1)[-1]
        match = closest(written, options)
        return written, (f"--{match.lstrip('-')}" if match else None), None
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

    def parse_args(self, *args: Any, **kwargs: Any) -> Any:
        """jsonargparse's parsing; the words parsed are kept, so an error can name the misspelt option."""
        given = args[0] if args else kwargs.get("args")
        self.given_words = [str(word) for word in (sys.argv[1:] if given is None else given)]
        return super().parse_args(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = parser.prog.replace(" [options]", "")
        options = list(parser._option_string_actions)
        found = misspelt_option(getattr(self, "given_words", sys.argv[1:]), options)
        text = one_line(message)
        if found is not None:
            written, hint, owner = found
            name = written.rsplit(".", 1)[-1]
            text = f"{owner} has no option '{name}'" if owner else f"unrecognized option {written}"
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

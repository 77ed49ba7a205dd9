"""Reading a config: one YAML file plus dotted overrides (`train.max_steps=200`) -> a validated `Config`.

Unknown keys are refused (naming them, with the closest valid key), and so are wrong types, before any heavy work
starts; keys that older versions wrote into run folders' config.yaml are migrated or dropped with a warning.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from importlib import resources
from pathlib import Path

import yaml

from eidos.config.schema import DATA_SOURCES, Config, DataConfig, _plain, _require

logger = logging.getLogger(__name__)


def _build_data(value, key: str) -> DataConfig:
    """The data section as the dataclass of its source; a key of another source is refused, naming it."""
    if not isinstance(value, dict):
        raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
    source = value.get("source", "openmoji")
    _require(source in DATA_SOURCES, f"{key}.source", source, "'openmoji', 'cache' or 'shards'")
    cls = DATA_SOURCES[source]
    own = [f.name for f in dataclasses.fields(cls)]
    for name in value:
        readers = [s for s, c in DATA_SOURCES.items() if name in {f.name for f in dataclasses.fields(c)}]
        if name not in own and readers:
            raise ValueError(f"config key '{key}.{name}' does not apply to {key}.source={source!r} (only "
                             f"{' and '.join(map(repr, readers))} read it); remove it (keys for {source!r}: "
                             f"{', '.join(own)})")
    return _build(cls, value, key)


def _convert(value, annotation, key: str):
    """Check `value` against a type annotation, converting YAML lists to tuples and ints to floats."""
    origin = typing.get_origin(annotation)
    if annotation == DataConfig:  # a tagged union: the source names the option
        return _build_data(value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, key)
            except ValueError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ValueError(f"config key {key!r} must be a mapping, got {value!r}")
        return _build(annotation, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key {key!r} must be a list, got {value!r}")
        args = typing.get_args(annotation)
        if origin is tuple and len(args) != len(value):
            raise ValueError(f"config key {key!r} must have {len(args)} items, got {value!r}")
        items = [_convert(v, args[i] if origin is tuple else args[0], f"{key}.{i}") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if annotation is str and isinstance(value, bool):
        raise ValueError(f"config key {key!r} must be of type str, got {value!r} (YAML reads an unquoted no, yes, "
                         f"off or on as a boolean: quote it, e.g. {key}='\"no\"')")
    if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
        raise ValueError(f"config key {key!r} must be of type {annotation.__name__}, got {value!r}")
    return value


def _build(cls, data: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
            raise ValueError(f"unknown config key {key!r}{hint} (valid keys here: {', '.join(names)})")
        kwargs[name] = _convert(value, hints[name], key)
    return cls(**kwargs)


def _list_index(part: str, items: list, override: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ValueError(f"override {override!r}: {where} has {len(items)} item(s), indices 0 to {len(items) - 1}, "
                         f"not {part!r}; add the item in the config file first")
    return int(part)


def _apply_override(data: dict, override: str) -> None:
    if "=" not in override:
        raise ValueError(f"override {override!r} is not of the form dotted.key=value (e.g. train.max_steps=200)")
    dotted, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else ""
    node = data
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = node[_list_index(part, node, override, ".".join(parts[:i]))]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ValueError(f"override {override!r}: {'.'.join(parts[: i + 1])!r} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(last, node, override, ".".join(parts[:-1]))] = value
    else:
        node[last] = value


# Keys older versions wrote into run folders' config.yaml: dropped with a warning, so old runs still load.
RETIRED_KEYS = {("data", "num_workers"): "the loader needs no worker processes"}


# Sections the trainer writes into a run's config.yaml as a record, not a setting: dropped when it is read.
STARTED_FROM = "started_from"  # where a fine-tune started (eidos/training/init_from.py)
RECORD_SECTIONS = (STARTED_FROM,)


# Older configs drew one time for both branches (objective.time_sampler/time_mean/time_std).
OLD_TIME_KEYS = {"time_sampler": "sampler", "time_mean": "mean", "time_std": "std"}


# Older versions had one flat data section for every source and wrote all of it into run folders' config.yaml:
# these keys at these values (their old defaults) are dropped where the source does not read them.
FLAT_DATA_DEFAULTS = {"cache_dir": "", "train_files": "", "held_out_files": "", "held_out_fraction": 0.05,
                      "split_seed": 0, "skin_tone_variants": "drop", "in_memory": True, "shuffle_buffer": 1000}


def _drop_flat_data_keys(data: dict, path) -> None:
    section = data.get("data")
    if not isinstance(section, dict) or not FLAT_DATA_DEFAULTS.keys() <= section.keys():
        return  # not a flat section an older eidos wrote
    cls = DATA_SOURCES.get(section.get("source", "openmoji"))
    own = {f.name for f in dataclasses.fields(cls)} if cls else set(section)
    dropped = [k for k, v in FLAT_DATA_DEFAULTS.items() if k not in own and section[k] == v]
    for key in dropped:
        del section[key]
    if dropped:
        logger.warning("%s: the data section is now one per source; ignoring %s, which data.source=%r does not "
                       "read", path, ", ".join(dropped), section.get("source"))


def _drop_retired_keys(data: dict, path) -> None:
    _drop_flat_data_keys(data, path)
    for (section, key), why in RETIRED_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            del data[section][key]
            logger.warning("%s: ignoring retired key %s.%s (%s)", path, section, key, why)
    objective = data.get("objective")
    if isinstance(objective, dict) and OLD_TIME_KEYS.keys() & objective.keys():
        shared = {"sampler": "lognormal", "mean": -0.8, "std": 1.6}  # the old defaults
        shared.update({new: objective.pop(old) for old, new in OLD_TIME_KEYS.items() if old in objective})
        objective.setdefault("flow_times", dict(shared))
        objective.setdefault("consistency_times", dict(shared))
        logger.warning("%s: objective.time_sampler/time_mean/time_std are now objective.flow_times and "
                       "objective.consistency_times (read as both)", path)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """The config of YAML file `path` (None = built-in defaults) with dotted `overrides` applied."""
    data: dict = {}
    if path is not None:
        with open(path) as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
        _drop_retired_keys(data, path)
        for section in RECORD_SECTIONS:
            data.pop(section, None)
    if overrides:
        # Fill defaults so list items can be overridden; not the data section's, so that an override of
        # data.source does not meet the keys of the source it replaces.
        file_data = dict(data.get("data") or {})
        data = {**_plain(_build(Config, data, "").to_dict()), "data": dict(file_data)}
        for override in overrides:
            _apply_override(data, override)
        _leave_other_source_keys(data["data"], file_data, overrides)
    return _build(Config, data, "")


def default_config_path() -> str:
    """The embedded default config (OpenMoji), shipped in the package as eidos/config.yaml."""
    return str(resources.files("eidos") / "config.yaml")


def _leave_other_source_keys(section: dict, file_data: dict, overrides: list[str]) -> None:
    """An override that changes data.source leaves behind the file's keys its new source does not read (the file
    wrote them for its own source); an override that sets such a key is still refused."""
    source = section.get("source", "openmoji")
    if source == file_data.get("source", "openmoji") or source not in DATA_SOURCES:
        return
    overridden = {o.split("=", 1)[0].removeprefix("data.") for o in overrides if o.startswith("data.")}
    own = {f.name for f in dataclasses.fields(DATA_SOURCES[source])}
    left = [key for key in file_data if key not in own and key not in overridden]
    for key in left:
        del section[key]
    if left:
        logger.info("data.source=%s: leaving out data.%s of the config file (not read by this source)", source,
                    ", data.".join(left))

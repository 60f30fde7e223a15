"""Validation in one place, property-based (hypothesis): random configs give a ``Config`` or
a one-line ``ConfigError`` and never another exception; a value of the wrong type or out of
range names its field; random TOML and overrides the same; a truncated or corrupt data zip
is an error naming the file, before any federated work starts."""

from __future__ import annotations

import dataclasses
import math
import zipfile
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fedmeta.cli
from fedmeta.config import MAXIMA, Config, from_dict, load
from fedmeta.errors import ConfigError

SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}
FIELDS = {f"{s}.{k}": kind for s, cls in SECTIONS.items() for k, kind in
          get_type_hints(cls).items()}
PROPERTY = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

HUGE = [10**9, 10**12, 2**63 - 1, 1e9, 1e12, 1e300]  # beyond every bound, within 64 bits
NEGATIVE = [-1, -10**9, -2**63, -1e12]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.just(10**400),
                    st.sampled_from(HUGE + NEGATIVE),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
                    st.sampled_from(["auto", "nan", "inf", "-1", "0", "1e400", "true", "1,2",
                                     "mean", "retry", "sign-flip", " 3 "]))
values = st.one_of(scalars, st.lists(scalars, max_size=3),
                   st.dictionaries(st.text(max_size=3), scalars, max_size=2))


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        section, _, name = key.partition(".")
        out.setdefault(section, {})
        if isinstance(out[section], dict):
            out[section][name] = value
    return out


def one_line(error: ConfigError) -> str:
    text = str(error)
    assert text and "\n" not in text and "is not allowed: expected" in text
    return text


@PROPERTY
@given(st.dictionaries(st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=10)),
                       values, max_size=6))
def test_random_configs_give_a_config_or_a_config_error(flat: dict[str, Any]) -> None:
    try:
        cfg = from_dict(nested(flat))
    except ConfigError as error:
        one_line(error)
    else:
        assert from_dict(cfg.to_dict()) == cfg  # what passes is a whole, valid config


@PROPERTY
@given(st.dictionaries(st.text(max_size=6), values, max_size=3) | values)
def test_random_top_levels_and_sections_give_config_errors(data: Any) -> None:
    try:
        from_dict(data if isinstance(data, dict) else {"federation": data})
    except ConfigError as error:
        one_line(error)


def _wrong_type(kind: Any) -> st.SearchStrategy:
    """Values ``kind`` never accepts."""
    junk_text = st.text(min_size=1, max_size=6).filter(
        lambda t: t.strip().lower() not in ("true", "false", "auto", "nan", "inf",
                                            "infinity", "-inf", "+inf")
        and not _parses(t))
    containers = st.lists(st.integers(), min_size=3, max_size=4) | st.dictionaries(
        st.text(max_size=2), st.integers(), min_size=1, max_size=2)
    if kind is bool:
        return st.integers() | st.floats() | junk_text | containers
    if kind in (int, int | None):
        return st.floats().filter(lambda v: not v.is_integer()) | junk_text | containers | (
            st.booleans() if kind is int else st.nothing()) | st.integers(min_value=2**63)
    if kind in (float, float | None):  # integers too large for a float too
        return junk_text | containers | st.booleans() | st.integers(min_value=2**1024)
    if kind is str:
        return st.integers() | st.floats() | st.booleans() | containers
    return junk_text | st.lists(st.floats(), min_size=3, max_size=4) | st.integers() | \
        st.tuples(st.integers(min_value=2**1024), st.floats())  # pairs


def _parses(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@PROPERTY
@given(st.data())
def test_a_value_of_the_wrong_type_names_its_field(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(FIELDS)))
    value = data.draw(_wrong_type(FIELDS[name]))
    with pytest.raises(ConfigError) as caught:
        from_dict(nested({name: value}))
    assert caught.value.field == name, one_line(caught.value)


OUT_OF_RANGE = {  # field -> values outside what it allows, with everything else default
    "task.k_shot": st.integers(max_value=0), "task.n_way": st.integers(max_value=0),
    "task.device_width": st.floats(max_value=0.0) | st.floats(min_value=1.0001),
    "meta.inner_lr": st.floats(max_value=0.0), "meta.inner_steps": st.integers(max_value=0),
    "federation.num_devices": st.integers(max_value=0),  # 1..4: num_held_out=4 is named
    "federation.rounds": st.integers(max_value=0),
    "federation.fraction_train": st.floats(min_value=1.0001) | st.floats(max_value=-1e-9),
    "federation.round_timeout": st.floats(max_value=0.0) | st.just(math.inf),
    "federation.min_good_replies": st.integers(max_value=0) | st.integers(min_value=9),
    "federation.max_retries": st.integers(max_value=-1),
    "federation.trim_fraction": st.floats(min_value=0.5) | st.floats(max_value=-1e-9),
    "federation.norm_bound": st.floats(max_value=0.0) | st.just(math.nan),
    "federation.filter_factor": st.floats(max_value=0.9999) | st.just(math.inf),
    "federation.krum_malicious": st.integers(max_value=-1),
    "federation.krum_select": st.integers(max_value=0),
    "federation.aggregation": st.text(max_size=8),
    "federation.short_round": st.text(max_size=8),
    "faults.crash": st.floats(min_value=1.0001) | st.floats(max_value=-1e-9) | st.just(math.nan),
    "faults.byzantine": st.floats(min_value=1.0001) | st.floats(max_value=-1e-9),
    "faults.byzantine_devices": st.floats(min_value=1.0) | st.floats(max_value=-1e-9)
    | st.just(math.nan),
    "faults.byzantine_mode": st.text(max_size=8),
    "faults.byzantine_factor": st.floats(max_value=0.0) | st.just(math.inf),
    "faults.hang_extra_s": st.floats(max_value=-1e-9) | st.just(math.nan),
    "simulation.num_cpus": st.floats(max_value=0.0),
    "train.seed": st.integers(max_value=-1),
    "task.device_classes": st.integers(max_value=0),
    "privacy.secagg_shares": st.integers(max_value=2),
    "privacy.secagg_quantization_range": st.integers(max_value=1),
    "simulation.dispatch": st.text(max_size=8),
}


@PROPERTY
@given(st.data())
def test_a_value_out_of_range_names_its_field(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(OUT_OF_RANGE)))
    value = data.draw(OUT_OF_RANGE[name].filter(
        lambda v: not (isinstance(v, str) and v in ("mean", "median", "trimmed-mean",
                                                    "norm-bound", "norm-filter",
                                                    "norm-filter-bound",
                                                    "norm-direction-filter", "multi-krum", "retry",
                                                    "skip", "sign-flip", "scale",
                                                    "indexed", "flower"))))
    with pytest.raises(ConfigError) as caught:
        from_dict(nested({name: value}))
    assert caught.value.field == name, one_line(caught.value)


NUMERIC = sorted(name for name, kind in FIELDS.items()
                 if kind in (int, float, int | None, float | None))


@PROPERTY
@given(st.data())
def test_huge_or_negative_numbers_in_any_field_give_a_config_or_name_a_field(
        data: st.DataObject) -> None:
    """Every numeric field, alone at a huge or negative value: a valid config (learning rates
    and norms may be large) or one line naming that field, or, for a value valid alone but
    not with the defaults around it, the field it conflicts with."""
    name = data.draw(st.sampled_from(NUMERIC))
    kind = FIELDS[name]
    value = data.draw(st.sampled_from(HUGE + NEGATIVE) | st.integers(min_value=-2**63,
                                                                        max_value=2**63 - 1))
    if kind in (int, int | None):
        value = int(value) if abs(value) < 2**63 else 2**63 - 1
    try:
        from_dict(nested({name: value}))
    except ConfigError as error:
        one_line(error)
        named = error.field.split(", ")
        assert name in named or (name, error.field) in CONFLICTS, one_line(error)


CONFLICTS = {("privacy.noise_multiplier", "privacy.noise"), ("fleet.deadline_s", "fleet.tiers"),
             ("federation.num_devices", "federation.num_held_out"),
             ("federation.num_held_out", "federation.min_train_devices"),
             ("privacy.secagg_shares", "privacy.secagg_threshold")}


@pytest.mark.parametrize("name", sorted(MAXIMA))
def test_a_value_above_its_bound_names_the_field_and_the_bound(name: str) -> None:
    high = MAXIMA[name]
    for value in (high + 1 if isinstance(high, int) else high * 1.5, 10**9 * high):
        with pytest.raises(ConfigError, match=rf"^{name}=.* expected at most ") as caught:
            from_dict(nested({name: value}))
        assert caught.value.field == name


@pytest.mark.parametrize("seed", [-1, -2**63, 2**32])
def test_a_seed_outside_32_bits_is_refused_before_ray_starts(
        seed: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = fedmeta.cli.main(["run", "--set", f"train.seed={seed}", "--out",
                             str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"train.seed={seed} is not allowed" in err
    assert not (tmp_path / "out").exists()
    assert from_dict({"train": {"seed": 2**32 - 1}}).train.seed == 2**32 - 1


def test_an_episode_that_cannot_fit_this_machine_is_refused_naming_its_fields() -> None:
    """Within every bound, but one Omniglot episode of 1000 ways x 2000 images needs terabytes
    of activations (the estimate written out here: 4 B x images x activations x 2 steps)."""
    from fedmeta.config import ACTIVATIONS, memory_bytes
    total = memory_bytes()
    if total is None:
        pytest.skip("this OS does not say how much memory it has")
    need = 4 * 1000 * 2000 * ACTIVATIONS["omniglot"] * 2
    assert need > total  # the case is constructed to exceed any machine this runs on
    with pytest.raises(ConfigError, match="an episode that fits this machine") as caught:
        from_dict({"task": {"kind": "omniglot", "n_way": 1000, "k_shot": 1000,
                            "q_query": 1000}})
    assert caught.value.field == "task.n_way, task.k_shot, task.q_query, meta.inner_steps"
    assert f"{need / 2**30:,.1f} GiB" in str(caught.value)
    from_dict({"task": {"kind": "omniglot", "n_way": 20, "k_shot": 5, "q_query": 15}})


def test_a_zip_with_too_few_alphabets_names_the_field_and_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image
    import io
    png = io.BytesIO()
    Image.new("L", (105, 105), 255).save(png, format="PNG")
    folder = tmp_path / "one"
    folder.mkdir()
    with zipfile.ZipFile(folder / "images_background.zip", "w") as archive:
        for c in range(1, 6):
            for d in range(1, 21):
                archive.writestr(f"images_background/Greek/character{c:02d}/"
                                 f"{c:04d}_{d:02d}.png", png.getvalue())
    code = fedmeta.cli.main(["run", "--set", "task.kind=omniglot", "--set",
                             f"task.data_dir={folder}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "task.test_alphabets=2 is not allowed" in err
    assert str(folder / "images_background.zip") in err
    assert not (tmp_path / "out").exists()


def test_numbers_too_large_for_a_float_or_for_printing_are_config_errors() -> None:
    for value in (2**1024, 10**5000):
        with pytest.raises(ConfigError, match="meta.inner_lr=.* within float range"):
            from_dict({"meta": {"inner_lr": value}})


def test_fault_probabilities_must_sum_to_at_most_one() -> None:
    with pytest.raises(ConfigError, match="summing to at most 1") as caught:
        from_dict({"faults": {"crash": 0.6, "nan": 0.5}})
    assert caught.value.field == "faults"


@PROPERTY
@given(text=st.text(max_size=60), overrides=st.lists(st.text(max_size=20), max_size=3))
def test_random_toml_and_overrides_give_config_errors(text: str, overrides: list[str],
                                                      tmp_path_factory) -> None:
    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load(path, overrides)
    except ConfigError as error:
        one_line(error)


def test_a_truncated_or_corrupt_data_zip_names_the_file_before_ray_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        archive.writestr("images_background/Greek/character01/0394_01.png", b"x" * 4000)
    for name, data in (("truncated", whole.read_bytes()[:1500]),
                       ("corrupt", b"PK\x03\x04" + bytes(range(256)) * 8)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "images_background.zip").write_bytes(data)
        code = fedmeta.cli.main(["run", "--set", "task.kind=omniglot", "--set",
                                 f"task.data_dir={folder}", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"{folder / 'images_background.zip'}: not a readable zip archive" in err
    assert not (tmp_path / "out").exists()

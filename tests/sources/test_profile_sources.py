"""``[[sources]]`` in a profile: each kind read into its generator, and every mistake a clear error
naming the source and the key (``serve`` exits 2 on it, with no traceback)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tap_emulator.cli import main
from tap_emulator.config import ConfigError, load_profile
from tap_emulator.sources import (
    Constant,
    Counter,
    EndMode,
    Interpolation,
    RandomWalk,
    Replay,
    Sine,
    SourceConfig,
    SourceError,
)
from tap_emulator.sources.profile import (
    MAX_REPLAY_BYTES,
    MAX_REPLAY_POINTS,
    MAX_SAMPLES_PER_SECOND,
    MAX_SOURCES,
    read_replay_csv,
)

HEAD = '[device]\nmodel = "x"\nserial_number = "S1"\nfirmware_version = "1"\n'


def profile_with(tmp_path: Path, sources: str) -> str:
    path = tmp_path / "sources.toml"
    path.write_text(HEAD + sources, encoding="utf-8")
    return str(path)


def load_sources(tmp_path: Path, sources: str) -> tuple[SourceConfig, ...]:
    return load_profile(profile_with(tmp_path, sources)).sources


def test_a_profile_without_sources_has_none(tmp_path: Path) -> None:
    assert load_sources(tmp_path, "") == ()
    assert load_profile("default").sources == ()


def test_each_kind_is_read_with_its_parameters_and_defaults(tmp_path: Path) -> None:
    (tmp_path / "series.csv").write_text("time,value\n0,1\n1.5,2\n3,4\n", encoding="utf-8")
    sources = load_sources(
        tmp_path,
        """
[[sources]]
variable = 1
kind = "constant"
value = 7

[[sources]]
variable = 2
kind = "counter"
start = 100
step = -2
period = 0.5
wrap = 90

[[sources]]
variable = 3
kind = "counter"

[[sources]]
variable = 4
kind = "sine"
period = 60
amplitude = 2.5
offset = 20
phase = 45

[[sources]]
variable = 5
kind = "random-walk"
seed = 7
step = 0.5
min = -1
max = 3

[[sources]]
variable = 6
kind = "replay"
file = "series.csv"

[[sources]]
variable = 7
kind = "replay"
file = "series.csv"
interpolation = "linear"
end = "loop"
interval = 0.25
""",
    )
    assert [(s.variable, s.kind) for s in sources] == [
        (1, "constant"),
        (2, "counter"),
        (3, "counter"),
        (4, "sine"),
        (5, "random-walk"),
        (6, "replay"),
        (7, "replay"),
    ]
    generators = [s.generator for s in sources]
    assert generators[0] == Constant(7.0)
    assert generators[1] == Counter(start=100, step=-2, period=0.5, wrap=90)
    assert generators[2] == Counter(start=0, step=1, period=1, wrap=None)
    assert generators[3] == Sine(period=60, amplitude=2.5, offset=20, phase=45, interval=3)  # period / 20
    assert generators[4] == RandomWalk(seed=7, step=0.5, minimum=-1, maximum=3, start=1, period=1)
    assert generators[5] == Replay((0, 1.5, 3), (1, 2, 4))  # hold between points, hold at the end
    assert generators[5].interpolation is Interpolation.HOLD and generators[5].end is EndMode.HOLD
    # Looping without a duration: the last point lasts as long as the gap before it (3 + 1.5).
    assert generators[6] == Replay((0, 1.5, 3), (1, 2, 4), Interpolation.LINEAR, EndMode.LOOP, 4.5, 0.25)


def test_a_replay_file_is_found_beside_the_profile(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text("# recorded on the bench\n\n0, 5\n 2 ,6\n", encoding="utf-8")
    (source,) = load_sources(tmp_path, '[[sources]]\nvariable = 9\nkind = "replay"\nfile = "data/r.csv"\n')
    assert source.generator == Replay((0, 2), (5, 6))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('kind = "sawtooth"', "'kind': 'sawtooth' is not a source kind"),
        ("", "'kind': None is not a source kind"),
        ("kind = [1]", "'kind': [1] is not a source kind"),
        ('kind = "constant"', "'value': is missing"),
        ('kind = "constant"\nvalue = "hot"', "'value': must be a finite number"),
        ('kind = "constant"\nvalue = nan', "'value': must be a finite number"),
        ('kind = "constant"\nvalue = true', "'value': must be a finite number"),
        ('kind = "constant"\nvalue = 1\nperiod = 2', "unknown key(s) 'period'"),
        ('kind = "counter"\nstep = 0', "'step': must not be 0"),
        ('kind = "counter"\nstart = 5\nwrap = 2', "'wrap': must lie beyond 'start'"),
        ('kind = "counter"\nperiod = 0.001', "'period': must be at least 0.01 seconds"),
        ('kind = "counter"\nperiod = -1', "'period': must be at least"),
        ('kind = "counter"\nsetp = 2', "unknown key(s) 'setp'"),
        ('kind = "sine"', "'period': is missing"),
        ('kind = "sine"\nperiod = 10\ninterval = 0', "'interval': must be at least"),
        ('kind = "sine"\nperiod = inf', "'period': must be a finite number"),
        ('kind = "random-walk"\nstep = 1\nmin = 0\nmax = 1', "'seed': is missing"),
        ('kind = "random-walk"\nseed = -1\nstep = 1\nmin = 0\nmax = 1', "'seed': must be an integer"),
        ('kind = "random-walk"\nseed = 1.5\nstep = 1\nmin = 0\nmax = 1', "'seed': must be an integer"),
        ('kind = "random-walk"\nseed = 1\nstep = 0\nmin = 0\nmax = 1', "'step': must be greater than 0"),
        ('kind = "random-walk"\nseed = 1\nstep = 1\nmin = 2\nmax = 1', "'max': must be greater than 'min'"),
        ('kind = "random-walk"\nseed = 1\nstep = 1\nmin = 0\nmax = 1\nstart = 3', "'start': must lie in"),
        ('kind = "replay"', "'file': is missing"),
        ('kind = "replay"\nfile = 3', "'file': must be a non-empty string"),
        ('kind = "replay"\nfile = "absent.csv"', "absent.csv not found"),
        ('kind = "replay"\nfile = "ok.csv"\ninterpolation = "cubic"', "'interpolation': must be one of"),
        ('kind = "replay"\nfile = "ok.csv"\nend = "bounce"', "'end': must be one of 'hold', 'loop'"),
        ('kind = "replay"\nfile = "ok.csv"\nduration = 5', "'duration': applies only with end = 'loop'"),
        ('kind = "replay"\nfile = "ok.csv"\nend = "loop"\nduration = 2', "'duration': must be longer"),
        ('kind = "replay"\nfile = "one.csv"\nend = "loop"', "'duration': is needed to loop a single point"),
    ],
)
def test_a_bad_source_is_a_config_error_naming_the_source_and_key(
    tmp_path: Path, table: str, message: str
) -> None:
    (tmp_path / "ok.csv").write_text("0,1\n2,3\n", encoding="utf-8")
    (tmp_path / "one.csv").write_text("0,1\n", encoding="utf-8")
    text = '[[sources]]\nvariable = 1\nkind = "constant"\nvalue = 0\n\n[[sources]]\nvariable = 2\n' + table
    with pytest.raises(ConfigError) as caught:
        load_sources(tmp_path, text + "\n")
    assert str(caught.value).startswith("sources.toml [[sources]] #2")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "message"),
    [("-1", "must be an integer in 0..65535"), ('"a"', "must be an integer"), ("65536", "0..65535")],
)
def test_the_variable_must_be_an_id(tmp_path: Path, variable: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_sources(tmp_path, f'[[sources]]\nvariable = {variable}\nkind = "constant"\nvalue = 1\n')


def test_two_sources_for_one_variable_are_refused(tmp_path: Path) -> None:
    table = '[[sources]]\nvariable = 4\nkind = "constant"\nvalue = 1\n'
    with pytest.raises(ConfigError, match=r"#2 'variable': variable 4 already has a source"):
        load_sources(tmp_path, table + table)


def test_sources_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "top.toml"
    path.write_text("sources = 3\n" + HEAD, encoding="utf-8")
    with pytest.raises(ConfigError, match="'sources' must be an array of tables"):
        load_profile(str(path))
    path.write_text("sources = [1]\n" + HEAD, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"#1: must be a table"):
        load_profile(str(path))


def test_the_number_of_sources_is_bounded(tmp_path: Path) -> None:
    many = "".join(
        f'[[sources]]\nvariable = {i}\nkind = "constant"\nvalue = 1\n' for i in range(MAX_SOURCES + 1)
    )
    with pytest.raises(ConfigError, match=f"at most {MAX_SOURCES}"):
        load_sources(tmp_path, many)
    assert len(load_sources(tmp_path, many.rsplit("[[sources]]", 1)[0])) == MAX_SOURCES


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("0,1\n2,2\n1,3\n", "line 3: time 1.0 is not after the previous row's 2.0 (unordered)"),
        ("0,1\n0,2\n", "line 2: time 0.0 is not after"),
        ("0,1\nsoon,2\n", "line 2: time 'soon' is not a number"),
        ("time,value\n0,warm\n", "line 2: value 'warm' is not a number"),
        ("0,1\n1,inf\n", "line 2: value must be finite"),
        ("-1,1\n", "line 1: time must be >= 0"),
        ("0,1,2\n", "line 1: expected 2 columns (time,value), found 3"),
        ("0\n", "found 1"),
        ("time,value\n", "has no (time, value) rows"),
        ("", "has no (time, value) rows"),
    ],
)
def test_a_bad_csv_is_a_config_error_naming_the_line(tmp_path: Path, csv: str, message: str) -> None:
    (tmp_path / "bad.csv").write_text(csv, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_sources(tmp_path, '[[sources]]\nvariable = 1\nkind = "replay"\nfile = "bad.csv"\n')
    assert message in str(caught.value)
    assert "[[sources]] #1 'file'" in str(caught.value)


def test_a_csv_that_is_not_text_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_bytes(b"0,1\n\xff\xfe,2\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_sources(tmp_path, '[[sources]]\nvariable = 1\nkind = "replay"\nfile = "bad.csv"\n')
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.csv"):
        load_sources(tmp_path, '[[sources]]\nvariable = 1\nkind = "replay"\nfile = "dir.csv"\n')


def test_the_csv_size_and_points_are_bounded(tmp_path: Path) -> None:
    table = '[[sources]]\nvariable = 1\nkind = "replay"\nfile = "big.csv"\n'
    (tmp_path / "big.csv").write_text("0,1\n" + "#" * MAX_REPLAY_BYTES + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"larger than {MAX_REPLAY_BYTES} bytes"):
        load_sources(tmp_path, table)
    rows = "".join(f"{i},{i % 7}\n" for i in range(MAX_REPLAY_POINTS + 1))
    (tmp_path / "big.csv").write_text(rows, encoding="utf-8")
    with pytest.raises(ConfigError, match=f"more than {MAX_REPLAY_POINTS} points"):
        load_sources(tmp_path, table)
    (tmp_path / "big.csv").write_text(rows.rsplit("\n", 2)[0] + "\n", encoding="utf-8")
    (source,) = load_sources(tmp_path, table)
    assert isinstance(source.generator, Replay) and len(source.generator.times) == MAX_REPLAY_POINTS


def test_the_points_of_all_replays_together_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tap_emulator.sources.profile.MAX_TOTAL_REPLAY_POINTS", 5)
    (tmp_path / "three.csv").write_text("0,1\n1,2\n2,3\n", encoding="utf-8")
    one = '[[sources]]\nvariable = {}\nkind = "replay"\nfile = "three.csv"\n'
    assert len(load_sources(tmp_path, one.format(1))) == 1
    with pytest.raises(ConfigError, match=r"#2 'file': the replays hold more than 5 points in all"):
        load_sources(tmp_path, one.format(1) + one.format(2))


def test_the_sample_rate_of_all_sources_together_is_bounded(tmp_path: Path) -> None:
    # 11 counters at 100 samples/s: 1100/s, over MAX_SAMPLES_PER_SECOND.
    fast = "".join(f'[[sources]]\nvariable = {i}\nkind = "counter"\nperiod = 0.01\n' for i in range(11))
    with pytest.raises(
        ConfigError, match=f"take 1100 samples a second in all, more than {MAX_SAMPLES_PER_SECOND}"
    ):
        load_sources(tmp_path, fast)
    assert len(load_sources(tmp_path, fast.rsplit("[[sources]]", 1)[0])) == 10
    # A hold replay counts its rows over its span; a linear one its interval; a constant nothing.
    (tmp_path / "dense.csv").write_text("".join(f"{i / 1000},{i}\n" for i in range(1001)), encoding="utf-8")
    replay = '[[sources]]\nvariable = 999\nkind = "replay"\nfile = "dense.csv"\n'
    with pytest.raises(ConfigError, match="take 1001 samples a second"):
        load_sources(tmp_path, replay)
    slow = replay.replace(
        'file = "dense.csv"', 'file = "slow.csv"\ninterpolation = "linear"\ninterval = 0.01'
    )
    (tmp_path / "slow.csv").write_text("0,0\n100,1\n", encoding="utf-8")
    ten, nine = fast.rsplit("[[sources]]", 1)[0], fast.rsplit("[[sources]]", 2)[0]
    with pytest.raises(ConfigError, match="take 1100 samples a second"):
        load_sources(tmp_path, ten + slow)
    assert len(load_sources(tmp_path, nine + slow)) == 10
    constants = "".join(f'[[sources]]\nvariable = {i}\nkind = "constant"\nvalue = 1\n' for i in range(200))
    assert len(load_sources(tmp_path, constants + slow)) == 201


def test_serve_with_a_bad_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = profile_with(tmp_path, '[[sources]]\nvariable = 1\nkind = "replay"\nfile = "missing.csv"\n')
    argv = ["serve", "--coap", "off", "--tcp", "off", "--ws", "off", "--http", "off"]
    assert main([*argv, "--state", ":memory:", "--profile", path]) == 2
    err = capsys.readouterr().err
    assert "missing.csv not found" in err and "Traceback" not in err


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300) | st.text(alphabet='0123456789.,-e#\n\r" abn', max_size=300).map(str.encode))
def test_any_csv_bytes_give_points_or_a_source_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_bytes(data)
    try:
        times, values = read_replay_csv(path, "fuzz")
    except SourceError:
        return
    assert len(times) == len(values) >= 1
    assert all(b > a for a, b in itertools.pairwise(times))

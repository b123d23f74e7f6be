"""``retro-ray data fetch``: the data sets land where the loaders look, checked, from local copies
of the official sources (``file://`` URLs, folders, and a loopback HTTP server for the download
path; no internet). The copies are made from the shared data (``tests/support/shared_data.py``):
the official HotPotQA layout is rebuilt from the Reflexion sample's 100 dev questions."""

from __future__ import annotations

import http.server
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from retro_ray.cli import EXIT_CONFIG, main
from retro_ray.data_fetch import DataFetchError, fetch
from retro_ray.envs.benchmarks.alfworld_data import default_data_path as alfworld_default
from retro_ray.envs.benchmarks.alfworld_data import index_games
from retro_ray.envs.benchmarks.hotpotqa_data import default_data_path as hotpotqa_default
from retro_ray.envs.registry import make_env
from tests.support.extras import require_alfworld
from tests.support.shared_data import ALFWORLD, HOTPOTQA

VALID_UNSEEN = ALFWORLD / "valid_unseen.tgz"


@pytest.fixture
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Private caches: the user's are never touched; the working directory is a scratch one."""
    monkeypatch.setenv("RETRO_RAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "alfworld"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def official_hotpotqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Reflexion sample's 100 questions in HotPotQA's own distractor layout (they are HotPotQA
    dev questions: the same records, as the HotPotQA project publishes them)."""
    sample = json.loads((HOTPOTQA / "reflexion_distractor_100.json").read_text())
    records = [
        {
            "_id": q.get("id") or f"q{i}",
            "question": q["question"],
            "answer": q["answer"],
            "type": q["type"],
            "level": q["level"],
            "supporting_facts": [
                [t, s]
                for t, s in zip(
                    q["supporting_facts"]["title"], q["supporting_facts"]["sent_id"], strict=True
                )
            ],
            "context": [
                [t, s]
                for t, s in zip(q["context"]["title"], q["context"]["sentences"], strict=True)
            ],
        }
        for i, q in enumerate(sample)
    ]
    path = tmp_path_factory.mktemp("mirror") / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(records))
    return path


class _Mirror(http.server.SimpleHTTPRequestHandler):
    cut_short = False  # announce the full size, send half: a dropped connection

    def log_message(self, *args: object) -> None:
        pass

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        data = source.read()
        outputfile.write(data[: len(data) // 2] if self.cut_short else data)


@pytest.fixture
def http_mirror(official_hotpotqa: Path) -> Iterator[str]:
    """A real HTTP server on loopback serving the mirror folder; yields its base URL."""

    def handler(*args, **kwargs):
        return _Mirror(*args, directory=str(official_hotpotqa.parent), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        _Mirror.cut_short = False


# ---- HotPotQA ---------------------------------------------------------------------------------


def test_hotpotqa_fetch_then_play_with_no_data_flag(
    caches: Path, official_hotpotqa: Path, capsys
) -> None:
    """The documented path of a user who cloned only the repository."""
    url = official_hotpotqa.as_uri()
    assert main(["data", "fetch", "hotpotqa", "--source", url, "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(hotpotqa_default()) and result["details"]["questions"] == 100
    assert hotpotqa_default().read_bytes() == official_hotpotqa.read_bytes()
    (record,) = [json.loads(x) for x in _provenance(hotpotqa_default()).read_text().splitlines()]
    assert record["source"] == url and len(record["sha256"]) == 64
    assert main(["env", "play", "hotpotqa", "--policy", "expert", "--tasks", "5", "--json"]) == 0
    played = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert played["tasks"] >= 1 and played["success_rate"] == 1.0


def test_hotpotqa_download_checks_the_announced_size(
    caches: Path, official_hotpotqa: Path, http_mirror: str
) -> None:
    url = f"{http_mirror}/{official_hotpotqa.name}"
    result = fetch("hotpotqa", source=url, log=lambda _: None)
    assert result.bytes == official_hotpotqa.stat().st_size
    before = hotpotqa_default().read_bytes()
    _Mirror.cut_short = True
    with pytest.raises(DataFetchError, match=r"the server announced \d+; the download was cut"):
        fetch("hotpotqa", source=url, log=lambda _: None)
    assert hotpotqa_default().read_bytes() == before  # the earlier copy stands
    assert [p.name for p in hotpotqa_default().parent.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(DataFetchError, match=r"cannot download .*404"):
        fetch("hotpotqa", source=f"{http_mirror}/missing.json", log=lambda _: None)


def test_hotpotqa_refuses_what_is_not_the_official_layout(caches: Path) -> None:
    with pytest.raises(DataFetchError, match="reflexion layout, not HotPotQA's official"):
        fetch("hotpotqa", source=str(HOTPOTQA / "reflexion_distractor_100.json"))
    with pytest.raises(DataFetchError, match="does not exist"):
        fetch("hotpotqa", source=str(caches / "nothing.json"))
    assert not hotpotqa_default().exists()


def test_a_dest_elsewhere_is_read_with_data(caches: Path, official_hotpotqa: Path, capsys) -> None:
    dest = caches / "elsewhere"
    argv = ["data", "fetch", "hotpotqa", "--source", str(official_hotpotqa), "--dest", str(dest)]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(dest / official_hotpotqa.name)
    assert f"pass --data {dest / official_hotpotqa.name}" in out.err
    assert make_env("hotpotqa", data_path=str(dest)).data.layout == "official"


# ---- ALFWorld ---------------------------------------------------------------------------------


def test_alfworld_fetch_lands_in_alfworlds_data_folder(caches: Path, capsys) -> None:
    argv = ["data", "fetch", "alfworld", "--source", VALID_UNSEEN.as_uri(), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["path"] == str(alfworld_default()) == str(caches / "alfworld" / "json_2.1.1")
    assert result["details"]["games"] == {"valid_unseen": 134}
    refs = index_games(None)  # the loaders' default
    assert len(refs) == 134 and {r.split for r in refs} == {"test"}
    assert refs[0].source == alfworld_default()  # read in place, no archive left behind
    assert _provenance(alfworld_default()).exists()


def test_alfworld_from_a_folder_and_a_refetch_replaces_only_its_split(
    caches: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    mirror = tmp_path_factory.mktemp("alfworld_mirror")
    with tarfile.open(VALID_UNSEEN) as tar:
        tar.extractall(mirror, filter="data")
    (mirror / "json_2.1.1" / "README.txt").write_text("not a game")
    fetch("alfworld", source=str(mirror / "json_2.1.1" / "valid_unseen"), log=lambda _: None)
    stale = alfworld_default() / "valid_unseen" / "stale-task" / "trial_0"
    stale.mkdir(parents=True)
    kept = alfworld_default() / "valid_seen" / "t-A-None-B-1" / "trial_1"
    kept.mkdir(parents=True)
    result = fetch("alfworld", source=str(mirror), log=lambda _: None)
    assert result.details["games"] == {"valid_unseen": 134}
    assert not stale.exists() and kept.exists()  # the fetched split replaced whole, others kept


def test_alfworld_refuses_an_incomplete_split(caches: Path, tmp_path: Path) -> None:
    fetch("alfworld", source=str(VALID_UNSEEN), log=lambda _: None)
    partial = tmp_path / "partial.tgz"
    with tarfile.open(VALID_UNSEEN) as tar, tarfile.open(partial, "w:gz") as out:
        games = [m for m in tar.getmembers() if m.name.endswith("game.tw-pddl")][:3]
        for member in games:
            out.addfile(member, tar.extractfile(member))
    with pytest.raises(DataFetchError, match=r"valid_unseen: 3 \(ALFWorld publishes 134\)"):
        fetch("alfworld", source=str(partial), log=lambda _: None)
    assert len(index_games(None)) == 134  # nothing was replaced
    odd = tmp_path / "odd.tgz"
    with tarfile.open(VALID_UNSEEN) as tar, tarfile.open(odd, "w:gz") as out:
        data = tar.extractfile(games[0])
        games[0].name = "games/one/game.tw-pddl"
        out.addfile(games[0], data)
    with pytest.raises(DataFetchError, match="none of its 1 games is in ALFWorld's layout"):
        fetch("alfworld", source=str(odd), log=lambda _: None)


@pytest.mark.slow
def test_alfworld_fetched_games_play(caches: Path, capsys) -> None:
    require_alfworld()
    assert main(["data", "fetch", "alfworld", "--source", str(VALID_UNSEEN)]) == 0
    assert main(["env", "play", "alfworld", "--policy", "expert", "--tasks", "1", "--json"]) == 0
    played = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert played["tasks"] == 1 and played["success_rate"] == 1.0


def test_unknown_sources_are_clear_errors(caches: Path, capsys) -> None:
    assert main(["data", "fetch", "alfworld", "--source", "ftp://example.invalid/x.zip"]) == (
        EXIT_CONFIG
    )
    assert "unsupported source 'ftp://example.invalid/x.zip'" in capsys.readouterr().err
    notes = caches / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataFetchError, match="neither a zip nor a tar archive"):
        fetch("alfworld", source=str(notes), log=lambda _: None)


def _provenance(path: Path) -> Path:
    return path.with_name(path.name + ".sources.jsonl")

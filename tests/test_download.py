"""`eidos data download`: the img2dataset command it runs, its errors before any work, and that img2dataset's
shards go on through `eidos data encode`. img2dataset itself is faked by a script that records its arguments
and writes one shard in img2dataset's layout."""

import json
import sys

import pytest

from eidos.cli.main import main
from eidos.data.cache import read_cache

FAKE_IMG2DATASET = """#!{python}
import io, json, pathlib, sys, tarfile
from PIL import Image

args = sys.argv[1:]
pathlib.Path({record!r}).write_text(json.dumps(args))
flags = dict(zip(args[::2], args[1::2]))
out = pathlib.Path(flags["--output_folder"])
out.mkdir(parents=True, exist_ok=True)
size = int(flags["--image_size"])
image = io.BytesIO()
Image.new("RGB", (size, size), (200, 30, 30)).save(image, "JPEG", quality=95)
caption = "a red square"
files = {{"000000000.jpg": image.getvalue(), "000000000.txt": caption.encode(),
          "000000000.json": json.dumps({{"key": "000000000", "caption": caption, "status": "success"}}).encode()}}
with tarfile.open(out / "00000.tar", "w") as tar:
    for name, data in files.items():
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
(out / "00000_stats.json").write_text(json.dumps({{"count": 1, "successes": 1, "failed_to_download": 0}}))
"""


@pytest.fixture
def fake(tmp_path):
    """The fake img2dataset program; its argv lands in tmp_path / 'argv.json'."""
    program = tmp_path / "bin" / "img2dataset"
    program.parent.mkdir()
    program.write_text(FAKE_IMG2DATASET.format(python=sys.executable, record=str(tmp_path / "argv.json")))
    program.chmod(0o755)
    return program


def recorded(tmp_path):
    record = tmp_path / "argv.json"
    return json.loads(record.read_text()) if record.exists() else None


@pytest.mark.parametrize("name, expected_format", [("urls.parquet", "parquet"), ("urls.csv", "csv"),
                                                   ("URLS.TSV", "tsv")])
def test_download_passes_img2dataset_its_flags(tmp_path, fake, name, expected_format, capsys):
    url_list = tmp_path / name
    url_list.write_text("URL,TEXT\nhttps://example.com/a.jpg,a red square\n")
    out = tmp_path / "shards"
    assert main(["data", "download", "--url-list", str(url_list), "--out", str(out), "--url-col", "URL",
                 "--caption-col", "TEXT", "--image-size", "64", "--processes", "2", "--threads", "8",
                 "--samples-per-shard", "100", "--img2dataset", str(fake)]) == 0
    assert recorded(tmp_path) == [
        "--url_list", str(url_list), "--input_format", expected_format, "--url_col", "URL", "--caption_col", "TEXT",
        "--output_format", "webdataset", "--output_folder", str(out), "--image_size", "64",
        "--resize_mode", "center_crop", "--encode_format", "jpg", "--encode_quality", "95", "--processes_count", "2",
        "--thread_count", "8", "--number_sample_per_shard", "100", "--enable_wandb", "False",
    ]
    printed = capsys.readouterr().out
    assert f"wrote 1 shard(s) with 1 images to {out}" in printed
    assert f"next: eidos data encode --shards '{out}/*.tar' --out cache/" in printed


def test_downloaded_shards_encode(tmp_path, fake, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")  # found on PATH this time
    (tmp_path / "urls.parquet").write_bytes(b"PAR1")  # the fake does not read it
    assert main(["data", "download", "--url-list", str(tmp_path / "urls.parquet"), "--out", str(tmp_path / "shards"),
                 "--image-size", "32"]) == 0
    flags = recorded(tmp_path)
    assert flags[flags.index("--url_col") + 1] == "url" and flags[flags.index("--caption_col") + 1] == "caption"
    assert flags[flags.index("--image_size") + 1] == "32"
    assert main(["data", "encode", "--shards", str(tmp_path / "shards" / "*.tar"), "--out", str(tmp_path / "cache"),
                 "--resolution", "16"]) == 0
    assert "encoded 1 samples from 1 shard(s)" in capsys.readouterr().out
    cached = read_cache(tmp_path / "cache" / "00000.h5", {"codec": "pixels", "resolution": 16})
    assert cached.keys == ["000000000"] and cached.captions == ["a red square"]
    red = cached.latent_mean[0].float().mean(dim=(1, 2))  # pixels in [-1, 1]: red high, green and blue low
    assert red[0] > 0.4 and red[1] < -0.4 and red[2] < -0.4


@pytest.mark.parametrize("case, message", [
    ("no program", "img2dataset is not on PATH"),
    ("wrong program path", "is not an executable file"),
    ("missing URL list", "does not exist"),
    ("json URL list", "has extension '.json'; expected one of .parquet, .csv, .tsv"),
    ("txt URL list", "holds URLs without captions"),
])
def test_download_refuses_bad_input_before_any_work(tmp_path, fake, monkeypatch, capsys, case, message):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    url_list = tmp_path / {"json URL list": "urls.json", "txt URL list": "urls.txt"}.get(case, "urls.csv")
    if case != "missing URL list":
        url_list.write_text("url,caption\n")
    program = {"no program": [], "wrong program path": ["--img2dataset", str(tmp_path / "bin" / "nope")]}
    argv = ["data", "download", "--url-list", str(url_list), "--out", str(tmp_path / "shards"),
            *program.get(case, ["--img2dataset", str(fake)])]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error
    if case in program:  # the fix is spelled out: a separate environment
        assert "python -m venv ~/.venvs/img2dataset" in error and "--img2dataset" in error
    if case == "missing URL list":
        assert str(url_list) in error
    assert recorded(tmp_path) is None and not (tmp_path / "shards").exists()


def test_dry_run_prints_the_command_and_runs_nothing(tmp_path, fake, capsys):
    (tmp_path / "urls.tsv").write_text("url\tcaption\n")
    assert main(["data", "download", "--url-list", str(tmp_path / "urls.tsv"), "--out", str(tmp_path / "shards"),
                 "--img2dataset", str(fake), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(f"{fake} --url_list {tmp_path / 'urls.tsv'} --input_format tsv")
    assert "--resize_mode center_crop" in printed
    assert recorded(tmp_path) is None and not (tmp_path / "shards").exists()

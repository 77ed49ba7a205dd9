"""`eidos serve`: the live generator's images and notices, and the page itself in a real headless Chromium."""

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from eidos.cli.main import main
from eidos.sampling.pipeline import EidosPipeline
from eidos.serving.live import LiveGenerator, Request, image_grid
from eidos.training.run_folder import resolve_model_folder
from tests.test_pipeline import make_pipeline

LONG_PROMPT = "a red apple on a small blue plate next to a green pear and a yellow banana in the sun"


@pytest.fixture(scope="module")
def generator():
    return LiveGenerator(make_pipeline())


def cells(grid: Image.Image, count: int, side: int = 16) -> list[np.ndarray]:
    """The `count` images of a grid made by `image_grid` from side x side images, back at their own size."""
    factor = 128 // side
    columns = int(np.ceil(np.sqrt(count)))
    array = np.asarray(grid)
    found = []
    for i in range(count):
        row, column = divmod(i, columns)
        top, left = row * (side * factor + 4), column * (side * factor + 4)
        found.append(array[top : top + side * factor : factor, left : left + side * factor : factor])
    return found


def test_image_i_is_the_pipelines_image_for_seed_plus_i(generator):
    result = generator.generate(Request("red apple", seed=7, num_images=3))
    assert result.grid.size == (2 * 128 + 4, 2 * 128 + 4)  # 3 images: 2 columns, 2 rows, 16 px cells x 8
    for i, cell in enumerate(cells(result.grid, 3)):
        alone = generator.pipeline("red apple", generator=torch.Generator().manual_seed(7 + i)).images[0]
        # one image against a batch of three: CPU kernels may round differently by ~1e-7, one uint8 level at most
        assert np.abs(cell.astype(int) - np.asarray(alone).astype(int)).max() <= 1
    assert result.notice == "" and "3 image(s), consistency sampler, 1 step(s)" in result.timing
    assert not np.array_equal(*cells(result.grid, 2))  # different seeds, different images


def test_prompt_steps_and_sampler_change_the_images(generator):
    grids = {name: np.asarray(generator.generate(request).grid) for name, request in {
        "apple": Request("red apple"), "heart": Request("blue heart"),
        "two steps": Request("red apple", consistency_steps=2),
        "flow": Request("red apple", sampler="flow", flow_steps=4, guidance_scale=2.0),
        "flow unguided": Request("red apple", sampler="flow", flow_steps=4, guidance_scale=1.0),
    }.items()}
    names = list(grids)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not np.array_equal(grids[a], grids[b]), (a, b)
    assert np.array_equal(grids["apple"], np.asarray(generator.generate(Request("red apple")).grid))
    flow = generator.generate(Request("red apple", sampler="flow", flow_steps=4))
    assert "flow sampler, 4 step(s)" in flow.timing


def test_a_prompt_over_the_text_encoders_limit_gets_a_notice(generator):
    assert generator.max_tokens == 8  # the pipeline's text_max_length
    tokens = len(generator.pipeline.tokenizer(LONG_PROMPT)["input_ids"])
    notice = generator.generate(Request(LONG_PROMPT, num_images=1)).notice
    # [CLS] + 6 words + [SEP] fit in 8 tokens: the model sees the first six words
    assert f"{tokens} tokens, the text encoder reads 8" in notice and '"a red apple on a small"' in notice
    assert generator.truncation_notice("a red apple on a small") == ""  # exactly 8 tokens: nothing cut
    assert "unconditional" in generator.generate(Request("", num_images=1)).notice


@pytest.mark.parametrize("request_,message", [
    (Request("a", num_images=0), "number of images must be 1 to 16, got 0"),
    (Request("a", num_images=17), "got 17"),
    (Request("a", consistency_steps=3), r"consistency steps must be one of \(1, 2, 4\), got 3"),
    (Request("a", seed=-1), "seed must be >= 0"),
    (Request("a", sampler="flow", guidance_scale=0.5), "guidance_scale"),
])
def test_bad_requests_are_refused(generator, request_, message):
    with pytest.raises(ValueError, match=message):
        generator.generate(request_)


def test_grid_layout():
    images = [Image.new("RGB", (32, 32), (i * 50, 0, 0)) for i in range(5)]
    grid = image_grid(images)
    assert grid.size == (3 * 128 + 2 * 4, 2 * 128 + 4)  # 5 images: 3 columns, 2 rows; 32 px x 4
    assert grid.getpixel((0, 0)) == (0, 0, 0) and grid.getpixel((128 + 4, 0)) == (50, 0, 0)
    assert grid.getpixel((0, 128 + 4)) == (150, 0, 0) and grid.getpixel((2 * 132, 132)) == (255, 255, 255)


def test_serve_without_gradio_names_the_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "gradio", None)  # makes `import gradio` raise ImportError
    assert main(["serve", "--checkpoint", str(tmp_path)]) == 2
    assert "pip install 'eidos[serve]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run folder's layout: the final export in `model/`."""
    run = tmp_path_factory.mktemp("run")
    make_pipeline().save_pretrained(run / "model")
    return run


def test_an_export_and_a_run_folder_resolve_to_the_same_model(run_folder):
    assert resolve_model_folder(run_folder) == resolve_model_folder(run_folder / "model") == run_folder / "model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(process: subprocess.Popen, url: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"eidos serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"eidos serve did not answer on {url} in {timeout_s} s:\n{log.read_text()}")


@pytest.fixture
def server(run_folder, tmp_path):
    """`eidos serve --checkpoint RUN` in its own process on a free port; yields its URL."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
           "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-m", "eidos.cli.main", "serve", "--checkpoint", str(run_folder),
                                    "--port", str(port), "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT,
                                   env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_server(process, url, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def browser():
    """Debian's headless Chromium through its chromedriver (.ci/run installs both); nothing is downloaded."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium "
                    "chromium-driver; .ci/run does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="eidos-chromium-")
    # Without the networking switches Chromium waits on services it cannot reach from a closed network.
    for switch in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--window-size=1200,800", f"--user-data-dir={profile}"):
        options.add_argument(switch)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def page_image(browser) -> tuple[str, np.ndarray] | None:
    """The src of the samples image on the page and its pixels (fetched from the server), once the browser
    has decoded it; None before."""
    from selenium.webdriver.common.by import By

    images = browser.find_elements(By.CSS_SELECTOR, "#samples img")
    if not images or not browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth",
                                                images[0]):
        return None
    src = images[0].get_attribute("src")
    with urllib.request.urlopen(src, timeout=10) as response:
        return src, np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def wait_until(condition, timeout_s: float = 30, what: str = "the page"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def type_prompt(browser, text: str) -> None:
    from selenium.webdriver.common.by import By

    box = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    box.clear()
    box.send_keys(text)


def test_the_page_in_a_headless_browser(server, browser, run_folder, tmp_path):
    from selenium.webdriver.common.by import By

    expected = LiveGenerator(EidosPipeline.from_pretrained(run_folder / "model"))
    browser.get(server)
    # On load: the example prompt's four 1-step samples, the very images the pipeline makes for seeds 0-3.
    first_src, first = wait_until(lambda: page_image(browser), what="the first image")
    assert first.shape == (2 * 128 + 4, 2 * 128 + 4, 3) and first.std() > 1  # a real image, not a blank
    assert np.array_equal(first, np.asarray(expected.generate(Request("red apple")).grid))
    assert browser.find_element(By.CSS_SELECTOR, "#notice").text.strip() == ""

    type_prompt(browser, "blue heart")
    heart = np.asarray(expected.generate(Request("blue heart")).grid)
    assert not np.array_equal(heart, first)
    # each keystroke may draw a grid; the last one drawn is the full prompt's
    wait_until(lambda: (shown := page_image(browser)) and np.array_equal(shown[1], heart),
               what="the new prompt's image")
    assert page_image(browser)[0] != first_src

    # The flow sampler: its options appear and the grid is its 30 guided Euler steps.
    browser.find_element(By.XPATH, "//label[.//input[@value='flow']]").click()
    flow = np.asarray(expected.generate(Request("blue heart", sampler="flow")).grid)
    wait_until(lambda: (shown := page_image(browser)) and np.array_equal(shown[1], flow), what="the flow image")
    assert "flow sampler, 30 step(s)" in browser.find_element(By.CSS_SELECTOR, "#timing").text
    assert "Flow guidance scale" in browser.find_element(By.TAG_NAME, "body").text

    type_prompt(browser, LONG_PROMPT)
    # the notice follows the typing (a prefix of 9 tokens is already truncated): wait for the whole prompt's
    notice = wait_until(
        lambda: "a red apple on a small" in (text := browser.find_element(By.CSS_SELECTOR, "#notice").text) and text,
        what="the truncation notice of the whole prompt")
    assert "the text encoder reads 8" in notice and "a red apple on a small" in notice
    browser.save_screenshot(str(tmp_path / "page.png"))
    assert Image.open(tmp_path / "page.png").size[0] > 0

"""Takes docs/runs_page.png: the MLflow Runs page of a sweep, as `rlsweep ui` links to it.

Not part of the package or the tests (it needs a browser). Regenerate after `make sweep`:

    .venv/bin/rlsweep ui --port 5090 &
    pip install playwright            # the Python package; the browser is the system's Chromium
    python docs/screenshot.py http://127.0.0.1:5090 [EXPERIMENT_NAME] [--chromium /usr/bin/chromium]
"""

import argparse
import json
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

p = argparse.ArgumentParser()
p.add_argument("base")
p.add_argument("experiment", nargs="?", default="cartpole_ppo")
p.add_argument("--chromium", default="/usr/bin/chromium")
p.add_argument("--metric", default="env_steps_to_target")
p.add_argument("-o", "--output", default=str(Path(__file__).with_name("runs_page.png")))
args = p.parse_args()

with urllib.request.urlopen(f"{args.base}/ajax-api/2.0/mlflow/experiments/get-by-name?experiment_name={args.experiment}") as r:
    exp_id = json.load(r)["experiment"]["experiment_id"]

with sync_playwright() as pw:
    browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1700, "height": 620})
    page.goto(f"{args.base}/#/experiments/{exp_id}/runs?workflowType=machine_learning")
    page.get_by_text("Run Name").first.wait_for()
    page.wait_for_timeout(1500)
    # the assistant side panel, when MLflow opens it, takes a third of the page
    close = page.locator("button[aria-label='Close']")
    if close.count():
        close.first.click()
    # the latest sweep's trials under its parent
    page.locator(".ag-row button").first.click()
    page.wait_for_timeout(500)
    # run names in full
    header = page.locator(".ag-header-cell", has_text="Run Name").first.bounding_box()
    if header:  # drag its right edge
        x, y = header["x"] + header["width"] - 2, header["y"] + header["height"] / 2
        page.mouse.move(x - 20, y)
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + 170, y, steps=10)
        page.mouse.up()
        page.wait_for_timeout(300)
    # the sweep metric and the searched values as columns
    page.get_by_role("button", name="Columns", exact=True).click()
    for name in (args.metric, "ppo.lr", "ppo.gamma", "ppo.train_batch_size"):
        page.locator(f"span.du-bois-light-tree-node-content-wrapper[title='{name}']").first.click()
        page.wait_for_timeout(300)
    page.keyboard.press("Escape")
    page.wait_for_timeout(1000)
    page.screenshot(path=args.output)
    browser.close()
print(args.output)

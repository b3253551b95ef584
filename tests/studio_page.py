"""The studio's page in a real headless chromium, found by the element ids the page gives its parts: for
tests/test_studio_browser.py and scripts/studio_screenshots.py (which drive the same flow)."""
from __future__ import annotations

import re
import shutil

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


class Page:
    """The studio's page in chromium, found by the element ids the page gives its parts."""

    def __init__(self, url: str, width: int = 1400, height: int = 1000):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--window-size={width},{height}"):
            options.add_argument(arg)
        options.binary_location = CHROMIUM
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.url = url

    def open(self) -> None:
        self.driver.get(self.url)  # a new browser session: a new draft
        self.wait(lambda: "checks pass" in self.value("problems"), 60)

    def find(self, css: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def box(self, elem_id: str):
        return self.find(f"#{elem_id} input, #{elem_id} textarea")[0]

    def value(self, elem_id: str) -> str:
        return self.box(elem_id).get_attribute("value")

    def text(self, elem_id: str) -> str:
        return self.find(f"#{elem_id}")[0].text

    def type(self, elem_id: str, text: str) -> None:
        from selenium.webdriver.common.keys import Keys

        box = self.box(elem_id)
        box.click()
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.DELETE)
        box.send_keys(text)
        box.send_keys(Keys.TAB)  # leaving the field is the edit

    def choose(self, group: str, option: str) -> None:
        self.pick(f"group-{group}", option)

    def pick(self, elem_id: str, option: str) -> None:
        """Choose `option` in the dropdown `elem_id` (clicked again while an update's spinner still covers it)."""
        def opened() -> list:
            self.box(elem_id).click()
            return self.find(f"#{elem_id} li[aria-label='{option}']")

        self.wait(opened, 30)
        self.find(f"#{elem_id} li[aria-label='{option}']")[0].click()

    def press(self, elem_id: str, label: str) -> None:
        """Click the option labelled `label` of the radio group `elem_id`, scrolled to the middle of the window
        first, and again while an update's spinner covers it."""
        def clicked() -> bool:
            [option] = [e for e in self.find(f"#{elem_id} label") if e.text.strip() == label]
            self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", option)
            option.click()
            return True

        self.wait(clicked, 30)

    def first_row(self, elem_id: str) -> list[str]:
        """The cells of a table's first row as shown (Gradio's grid cells; its <table> only sizes the columns)."""
        cells = self.find(f"#{elem_id} [role=gridcell][data-row='0']")
        return [c.text.strip() for c in sorted(cells, key=lambda c: int(c.get_attribute("data-col")))]

    def click(self, elem_id: str) -> None:
        self.find(f"#{elem_id}")[0].click()

    def tab(self, name: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{name}']").click()

    def points(self, chart: str, curve: str) -> int:
        """How many points the chart's curve has (its SVG path: one move and a line to each next point)."""
        paths = self.find(f"#{chart} g[id='{curve}'] path")
        return len(re.findall(r"[ML]", paths[0].get_attribute("d"))) if paths else 0

    def wait(self, condition, timeout: float = 120):
        """Until `condition()` holds; a part not (yet) on the page, or redrawn meanwhile, counts as not yet."""
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.support.ui import WebDriverWait

        ignored = (IndexError, WebDriverException)
        return WebDriverWait(self.driver, timeout, poll_frequency=0.2, ignored_exceptions=ignored).until(
            lambda _: condition())

"""Talking to a WebShop server: fetching its pages over HTTP and reading them as text.

The official Flask app (``web_agent_site/app.py``) renders five kinds of page from its Jinja
templates; what matters to an agent, and how it appears in the HTML, is:

* clickable buttons: the text of a ``<button>`` (Search, Back to Search, ``< Prev``, ``Next >``,
  Description, Features, Reviews, Buy Now);
* products on a results page: ``<a class="product-link">ASIN</a>``, then the title and price;
* buying options on an item page: ``<input type="radio" name="size" value="m">`` with a
  ``<label>`` showing the value; the input's ``name`` is the option's type;
* the instruction, in the element ``#instruction-text``; the search bar, ``#search_input``;
* the score on the done page: ``<h3 id="reward">Your score (min 0.0, max 1.0)<pre>0.5</pre>``.

``SiteClient`` builds the app's URLs (keywords and options travel as Python literals, which the app
reads with ``ast.literal_eval``) and retries a request that failed to connect.

Text is rendered in ReAct's style: clickables in brackets (a chosen option in double brackets),
one line per piece of plain text, consecutive clickables on one line. Hidden elements (the done
page carries the goal in a ``display:none`` block) and the template's comments are never shown.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

from retro_ray.llm.base import EndpointError

_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}
_SKIP = {"head", "script", "style", "title", "noscript"}
_SCORE = re.compile(r"max 1\.0\)\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


@dataclass(frozen=True)
class Node:
    text: str
    kind: str  # "text" | "button" | "product" | "option"
    hidden_context: bool = False  # inside #instruction-text (shown on the search page only)


@dataclass
class Page:
    """One page as the agent sees it, plus what the adapter needs to follow a click."""

    nodes: list[Node] = field(default_factory=list)
    option_types: dict[str, str] = field(default_factory=dict)  # option value -> its type
    has_search_bar: bool = False
    instruction: str = ""
    score: float | None = None  # set on the done page only

    @property
    def buttons(self) -> list[str]:
        return [n.text for n in self.nodes if n.kind == "button"]

    @property
    def products(self) -> list[str]:
        return [n.text for n in self.nodes if n.kind == "product"]

    def render(
        self, chosen: set[str], max_products: int, max_chars: int, show_instruction: bool
    ) -> str:
        """The page as text: at most ``max_products`` products, at most ``max_chars`` chars."""
        lines: list[str] = []
        inline = False  # the last line ends with a clickable: the next clickable joins it
        shown, skipping = 0, False
        for node in self.nodes:
            if node.hidden_context and not show_instruction:
                continue
            if node.kind == "product":
                shown += 1
                skipping = shown > max_products
            elif node.kind == "button":
                skipping = False
            if skipping:
                continue
            if node.kind == "text":
                lines.append(node.text)
                inline = False
                continue
            token = f"[[{node.text}]]" if node.text in chosen else f"[{node.text}]"
            heading = lines and node.kind == "option" and lines[-1] in self.option_types.values()
            if node.kind != "product" and (inline or heading):
                lines[-1] += f" {token}"
            else:
                lines.append(token)
            inline = node.kind != "product"
        text = "\n".join(lines)
        return text if len(text) <= max_chars else text[: max_chars - 3].rstrip() + "..."


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self.stack: list[tuple[str, dict[str, str]]] = []
        self.instruction_parts: list[str] = []
        self.reward_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "input":
            if values.get("id") == "search_input":
                self.page.has_search_bar = True
            if values.get("type") == "radio" and values.get("value"):
                self.page.option_types[values["value"]] = values.get("name", "option")
        if tag not in _VOID:
            self.stack.append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        # The templates close some tags with the wrong name (<h4>..</h5>): pop to the nearest match.
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        text = " ".join(data.split())
        if not text or any(tag in _SKIP or _hidden(attrs) for tag, attrs in self.stack):
            return
        ids = {attrs.get("id") for _, attrs in self.stack}
        if "reward" in ids:
            self.reward_parts.append(text)
        in_instruction = "instruction-text" in ids
        if in_instruction:
            self.instruction_parts.append(text)
        tag, attrs = self.stack[-1] if self.stack else ("", {})
        if any(t == "button" for t, _ in self.stack):
            kind = "button"
        elif tag == "a" and "product-link" in attrs.get("class", "").split():
            kind = "product"
        elif tag == "label":
            kind = "option"
        else:
            kind = "text"
        self.page.nodes.append(Node(text, kind, in_instruction))


def _hidden(attrs: dict[str, str]) -> bool:
    return "hidden" in attrs or "display:none" in attrs.get("style", "").replace(" ", "")


def parse_page(html: str) -> Page:
    parser = _Parser()
    parser.feed(html)
    parser.close()
    page = parser.page
    instruction = " ".join(parser.instruction_parts)
    instruction = re.sub(r"^Instruction:\s*", "", instruction)
    page.instruction = instruction.split(" Current Query:")[0].strip()
    match = _SCORE.search(" ".join(parser.reward_parts))
    if match:
        page.score = float(match.group(1))
    return page


class WebShopServerError(EndpointError):
    """The WebShop server stayed unreachable or failing: not a failed episode, the run stops."""


@dataclass
class SiteClient:
    base_url: str
    timeout_s: float
    retries: int
    backoff_s: float

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        # Loopback never goes through an HTTP proxy set in the environment.
        loopback = host in ("127.0.0.1", "localhost", "::1")
        self._opener = urllib.request.build_opener(
            *([urllib.request.ProxyHandler({})] if loopback else [])
        )

    @staticmethod
    def path(kind: str, session: str, where: dict[str, Any]) -> str:
        """The app's route for a page ``kind``: search, results, item, sub or done."""
        q = urllib.parse.quote
        words = q(repr(where.get("keywords", [])), safe="")
        options = q(repr(where.get("options", {})), safe="")
        at = f"{session}/{where.get('asin')}"
        return {
            "search": lambda: q(session, safe=""),
            "results": lambda: f"search_results/{session}/{words}/{where['page']}",
            "item": lambda: f"item_page/{at}/{words}/{where['page']}/{options}",
            "sub": lambda: f"item_sub_page/{at}/{words}/{where['page']}/{where['sub']}/{options}",
            "done": lambda: f"done/{at}/{options}",
        }[kind]()

    def fetch(self, path: str) -> Page:
        url = f"{self.base_url}/{path}"
        error: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                with self._opener.open(url, timeout=self.timeout_s) as response:
                    return parse_page(response.read().decode("utf-8", "replace"))
            except urllib.error.HTTPError as exc:
                if exc.code < 500:
                    raise WebShopServerError(
                        f"the server at {self.base_url} answered HTTP {exc.code} for {url}: is it "
                        "the WebShop app (web_agent_site/app.py)?"
                    ) from None
                error = exc
            except (urllib.error.URLError, OSError) as exc:
                error = exc
        if isinstance(error, urllib.error.HTTPError):
            raise WebShopServerError(
                f"the WebShop server at {self.base_url} kept answering HTTP {error.code} for "
                f"{url} ({self.retries + 1} tries); its log says why (a goal index beyond the "
                "server's goals is one cause: check env.options.num_goals)"
            )
        raise WebShopServerError(
            f"the WebShop server at {self.base_url} did not answer {url} after "
            f"{self.retries + 1} tries ({error}). Start it in a WebShop checkout "
            "(./run_dev.sh, or python -m web_agent_site.app) and set env.options.base_url to "
            "its address; see docs/benchmarks.md"
        )

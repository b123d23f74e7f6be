"""A tiny stand-in for the official WebShop Flask app, for testing the HTTP adapter offline.

Same URL scheme as ``web_agent_site/app.py`` (``/<session>``, ``/search_results/<session>/
<keywords>/<page>``, ``/item_page/...``, ``/item_sub_page/...``, ``/done/<session>/<asin>/
<options>``), keywords and options read with ``ast.literal_eval`` as the app does, and pages with
the templates' structure, quirks included (``<h4>..</h5>``, a commented-out block, a script, the
goal in a hidden block of the done page), so that what the adapter parses here it parses there.

The catalogue is a dozen products and three goals; the reward is a simplified WebShop reward:
the share of the goal's attributes, options and price limit the purchase meets, halved for a
product of another category. Standard library only; listens on loopback, port 0.
"""

from __future__ import annotations

import ast
import threading
import time
import urllib.parse
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HEAD = '<head><link rel="stylesheet" href="/static/style.css"><title>WebShop</title></head>'

PRODUCTS: dict[str, dict[str, Any]] = {
    "B09SHOE001": {
        "Title": "Men's Running Shoes Breathable Mesh Sneakers",
        "price": 45.99,
        "category": "shoes",
        "options": {"size": ["8", "9", "10"], "color": ["red", "blue"]},
        "attributes": ["running", "breathable"],
        "Description": "Light running shoes with a breathable mesh upper.",
    },
    "B0DEO00001": {
        "Title": "Bright Citrus Deodorant for Sensitive Skin 3 Ounce",
        "price": 10.99,
        "category": "beauty",
        "options": {
            "scent": ["citrus", "lavender"],
            "size": ["3 ounce (pack of 1)", "3 ounce (pack of 2)"],
        },
        "attributes": ["sensitive skin", "aluminum free"],
        "Description": "Natural deodorant, safe for sensitive skin.",
    },
}
for number in range(2, 13):  # enough shoes for a second page of results
    PRODUCTS[f"B09SHOE{number:03d}"] = {
        "Title": f"Casual Walking Shoes Model {number}",
        "price": 30.0 + number,
        "category": "shoes",
        "options": {"size": ["9", "10"]},
        "attributes": ["walking"],
        "Description": f"Everyday walking shoes, model {number}.",
    }

GOALS = [
    {
        "instruction_text": "i need red running shoes in size 9, and price lower than 60.00 dollars",
        "asin": "B09SHOE001",
        "category": "shoes",
        "attributes": ["running"],
        "goal_options": {"size": "9", "color": "red"},
        "price_upper": 60.0,
    },
    {
        "instruction_text": "i want a citrus deodorant for sensitive skin, 3 ounce (pack of 1), "
        "and price lower than 50.00 dollars",
        "asin": "B0DEO00001",
        "category": "beauty",
        "attributes": ["sensitive skin"],
        "goal_options": {"scent": "citrus", "size": "3 ounce (pack of 1)"},
        "price_upper": 50.0,
    },
]


def reward(asin: str, options: dict[str, str], goal: dict[str, Any]) -> float:
    product = PRODUCTS[asin]
    attrs = sum(a in product["attributes"] for a in goal["attributes"])
    opts = sum(options.get(k) == v for k, v in goal["goal_options"].items())
    price = product["price"] <= goal["price_upper"]
    total = len(goal["attributes"]) + len(goal["goal_options"]) + 1
    share = (attrs + opts + price) / total
    return round(share if product["category"] == goal["category"] else share / 2, 4)


def _instruction(text: str, query: str | None = None) -> str:
    lines = f'<h4 style="padding:2px 10px;">Instruction: {escape(text)}</h4>'
    if query is not None:
        lines += f'<h4 style="padding:2px 10px;">Current Query: {escape(query)}</h4>'
    return f'<div id="instruction-text">{lines}</div>'


def _button(label: str, action: str = "#", css: str = "btn btn-primary") -> str:
    return f'<form method="post" action="{action}"><button type="submit" class="{css}">{escape(label)}</button></form>'


def search_page(goal: dict[str, Any]) -> str:
    return (
        f'<!DOCTYPE html><html>{HEAD}<body><div class="container"><div id="logo"><h2>WebShop</h2></div>'
        f'<div id="instruction-text" class="text-center"><h4>Instruction: <br>{escape(goal["instruction_text"])}</h4></div>'
        '<form role="form" method="post"><input id="search_input" class="form-control" type="text" '
        'name="search_query" placeholder="Search..." required/><span class="input-group-btn">'
        '<button class="btn btn-success" type="submit"><i class="glyphicon glyphicon-search"></i>Search</button>'
        "</span></form></div></body></html>"
    )


def results_page(goal: dict[str, Any], keywords: list[str], page: int) -> str:
    words = {w.lower() for w in keywords}
    hits = [a for a, p in PRODUCTS.items() if words & set(p["Title"].lower().split())]
    hits.sort(key=lambda a: -len(words & set(PRODUCTS[a]["Title"].lower().split())))
    shown = hits[(page - 1) * 10 : page * 10]
    buttons = _button("Back to Search", css="btn btn-success")
    if page > 1:
        buttons += _button("< Prev")
    if page * 10 < len(hits):
        buttons += _button("Next >")
    items = "".join(
        f'<div class="grid-item"><img src="x.jpg" class="result-img">'
        f'<h4 class="product-asin"><a class="product-link" href="#">{a}</a></h4>'
        f'<h4 class="product-title">{escape(PRODUCTS[a]["Title"])}</h5>'
        f'<div class="d-flex"><h5 class="product-price">${PRODUCTS[a]["price"]}</h6></div></div>'
        for a in shown
    )
    query = " ".join(f" {k} " for k in keywords)
    return (
        f"<!DOCTYPE html><html>{HEAD}<body><div class='container py-5'>"
        f"{_instruction(goal['instruction_text'], query)}<div class='row'><div><h1>Results</h1>"
        f"<p>Page {page} ({(page - 1) * 10 + 1}-{page * 10}) of {len(hits)} total results</p></div>"
        f'<div class="inline-block">{buttons}</div></div>'
        "<!-- Old Row Layout --><!-- <div><h4>old layout {{item.Title}}</h4></div> -->"
        f'<div class="grid-container">{items}</div></div></body></html>'
    )


def item_page(goal: dict[str, Any], asin: str, keywords: str, options: dict[str, str]) -> str:
    product = PRODUCTS[asin]
    groups = ""
    for name, values in product["options"].items():
        radios = "".join(
            f'<input type="radio" id="radio_{name}{i}" name="{escape(name)}" value="{escape(v)}" data-url="#">'
            f'<label for="radio_{name}{i}">{escape(v)}</label>'
            for i, v in enumerate(values)
        )
        groups += f'<div class="row top-buffer"><h4>{escape(name)}</h4><div class="radio-toolbar">{radios}</div></div>'
    subs = "".join(
        f'<div class="col-sm-3">{_button(s)}</div>' for s in ("Description", "Features", "Reviews")
    )
    return (
        f"<!DOCTYPE html><html>{HEAD}<body><div class='container py-5'>"
        f"{_instruction(goal['instruction_text'], keywords)}<div>"
        f"{_button('Back to Search', css='btn btn-success')}{_button('< Prev')}</div>"
        f'<div class="row"><div class="col-md-4"><img id="product-image" src="x.jpg">{groups}</div>'
        f'<div class="col-md-6"><h2>{escape(product["Title"])}</h2><h4>Price: ${product["price"]}</h4>'
        f'<h4>Rating: N.A.</h4><div class="row">{subs}</div></div>'
        f'<div class="col-sm-2">{_button("Buy Now", css="btn btn-lg purchase")}</div></div></div></body>'
        f"<script>let options = JSON.parse(`{escape(repr(options))}`);</script></html>"
    )


def sub_page(goal: dict[str, Any], asin: str, sub: str) -> str:
    product = PRODUCTS[asin]
    body = {
        "Description": product["Description"],
        "Features": "; ".join(product["attributes"]),
        "Reviews": "No reviews found",
    }[sub]
    return (
        f"<!DOCTYPE html><html>{HEAD}<body><div class='container py-5'>"
        f"{_instruction(goal['instruction_text'])}<div>"
        f"{_button('Back to Search', css='btn btn-success')}{_button('< Prev')}</div>"
        f'<div class="card card-body"><p class="product-info">{escape(body)}</p></div></div></body></html>'
    )


def done_page(goal: dict[str, Any], asin: str, options: dict[str, str], score: float) -> str:
    return (
        f"<!DOCTYPE html><html>{HEAD}<body><div class='container'><div id='thankyou'>"
        "<h1>Thank you for shopping with us!</h1></div><div id='stats'>"
        '<h3 align="mturk_code">Your code: </h3><p><pre>CODE</pre> (Paste it in your MTurk interface.)</p>'
        f'<div style="display:none"><h4 id="asin">asin<pre>{asin}</pre></p>'
        f'<h4 id="options">options<pre>{escape(repr(options))}</pre></h4>'
        f'<h4 id="goal-asin">asin<pre>{goal["asin"]}</pre></p>'
        f'<h4 id="goal-options">options<pre>{escape(repr(goal["goal_options"]))}</pre></h4></div>'
        f'<hr class="solid"><h3 id="reward">Your score (min 0.0, max 1.0)<pre>{score}</pre></h3>'
        f"<h4 hidden>Reward Details <div id='reward_info'><pre>{{}}</pre></div></h4>"
        "</div></div></body></html>"
    )


class WebShopTestServer:
    """``with WebShopTestServer() as server:`` serves at ``server.url``; ``server.paths`` logs
    every requested path (decoded), ``server.sessions`` the goal index of each session;
    ``delay_s`` slows every answer down. ``in_flight`` counts requests inside that delay (the
    client is waiting on them), ``max_in_flight`` the most at once."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.paths: list[str] = []
        self.sessions: dict[str, int] = {}
        self.delay_s = delay_s  # added to every answer: a slow catalogue server
        self.in_flight = self.max_in_flight = 0
        self._count_lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._waiting(+1)
                time.sleep(outer.delay_s)
                outer._waiting(-1)
                raw = urllib.parse.urlsplit(self.path).path
                outer.paths.append(urllib.parse.unquote(raw))
                try:
                    status, html = outer.route(
                        [urllib.parse.unquote(p) for p in raw.split("/")[1:]]
                    )
                except (KeyError, IndexError, ValueError, SyntaxError) as exc:
                    status, html = 500, f"Internal Server Error: {exc!r}"
                body = html.encode()
                self.send_response(status)
                if status == 302:
                    self.send_header("Location", "/abc")
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _waiting(self, change: int) -> None:
        with self._count_lock:
            self.in_flight += change
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def route(self, parts: list[str]) -> tuple[int, str]:
        if parts == [""]:
            return 302, ""
        if len(parts) == 1:  # /<session>: a fixed_<i> session gets goal i, as in the app
            if parts[0] not in self.sessions:
                self.sessions[parts[0]] = int(parts[0].split("_")[-1]) if "fixed" in parts[0] else 0
            return 200, search_page(GOALS[self.sessions[parts[0]]])
        route, session, *rest = parts
        goal = GOALS[self.sessions[session]]
        if route == "search_results" and len(rest) == 2:
            words = ast.literal_eval(rest[0]) if rest[0].startswith("[") else [rest[0]]
            return 200, results_page(goal, words, int(rest[1]))
        if route == "item_page" and len(rest) == 4:
            return 200, item_page(goal, rest[0], rest[1], ast.literal_eval(rest[3]))
        if route == "item_sub_page" and len(rest) == 5:
            return 200, sub_page(goal, rest[0], rest[3])
        if route == "done" and len(rest) == 2:
            options = ast.literal_eval(rest[1])
            return 200, done_page(goal, rest[0], options, reward(rest[0], options, goal))
        return 404, "Not Found"

    def __enter__(self) -> WebShopTestServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

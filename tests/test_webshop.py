"""The WebShop HTTP adapter against a stand-in server with the official app's URLs and pages:
whole episodes, the URL scheme, invalid actions, the step limit, the splits, the reflectors, and
a clear error when no server answers."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator

import pytest

from retro_ray.agents.actors import ActorTurn
from retro_ray.agents.prompts import ParsedAction
from retro_ray.agents.trial_loop import TrialLoop
from retro_ray.cli import EXIT_ENDPOINT, main
from retro_ray.envs.base import Task
from retro_ray.envs.benchmarks.webshop import WebShopEnv, WebShopOptions
from retro_ray.envs.benchmarks.webshop_site import WebShopServerError, parse_page
from retro_ray.envs.registry import make_env
from tests.support.episodes import play
from tests.support.webshop_server import WebShopTestServer, done_page


@pytest.fixture(scope="module")
def server() -> Iterator[WebShopTestServer]:
    with WebShopTestServer() as running:
        yield running


@pytest.fixture
def env(server: WebShopTestServer) -> WebShopEnv:
    return make_env("webshop", {"base_url": server.url, "retries": 0})


def goal(index: int) -> Task:
    return Task("webshop", f"fixed_{index}", "test", {"goal": index})


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_full_episode_search_click_option_buy(env: WebShopEnv, server: WebShopTestServer) -> None:
    first = env.reset(goal(0))
    assert first.splitlines() == [
        "WebShop",
        "Instruction:",
        "i need red running shoes in size 9, and price lower than 60.00 dollars",
        "[Search]",
    ]
    results = env.step("search[Running Shoes]").observation
    assert results.splitlines()[:5] == [
        "Results",
        "Page 1 (1-10) of 12 total results",
        "[Back to Search] [Next >]",
        "[B09SHOE001]",
        "Men's Running Shoes Breathable Mesh Sneakers",
    ]
    assert "Instruction" not in results  # shown on the search page only
    item = env.step("click[b09shoe001]").observation  # product ids and buttons ignore case
    assert "size [8] [9] [10]" in item and "[Description] [Features] [Reviews] [Buy Now]" in item
    assert env.step("click[9]").observation == "You have clicked 9."
    assert env.step("click[red]").observation == "You have clicked red."
    assert "Light running shoes" in env.step("click[Description]").observation
    assert "size [8] [[9]] [10]\ncolor [[red]] [blue]" in env.step("click[< Prev]").observation
    bought = env.step("click[Buy Now]")
    assert bought.observation == "Your score (min 0.0, max 1.0): 1.0"
    assert bought.done and bought.reward == 1.0 and bought.info["won"]
    assert server.paths[-8:] == [
        "/fixed_0",
        "/search_results/fixed_0/['running', 'shoes']/1",
        "/item_page/fixed_0/B09SHOE001/['running', 'shoes']/1/{}",
        "/item_page/fixed_0/B09SHOE001/['running', 'shoes']/1/{'size': '9'}",
        "/item_page/fixed_0/B09SHOE001/['running', 'shoes']/1/{'size': '9', 'color': 'red'}",
        "/item_sub_page/fixed_0/B09SHOE001/['running', 'shoes']/1/Description/"
        "{'size': '9', 'color': 'red'}",
        "/item_page/fixed_0/B09SHOE001/['running', 'shoes']/1/{'size': '9', 'color': 'red'}",
        "/done/fixed_0/B09SHOE001/{'size': '9', 'color': 'red'}",
    ]
    assert env.step("click[Buy Now]").observation == "The episode is over."


def test_partial_match_scores_below_one(env: WebShopEnv) -> None:
    actions = ["search[deodorant]", "click[B0DEO00001]", "click[lavender]", "click[Buy Now]"]
    trajectory = play(env, goal(1), actions)
    assert trajectory.done and not trajectory.won and trajectory.score == 0.5
    assert sum(s.reward for s in trajectory.steps) == 0.5


def test_paging_and_going_back(env: WebShopEnv) -> None:
    env.reset(goal(0))
    env.step("search[shoes]")
    second = env.step("click[Next >]").observation
    assert "Page 2 (11-20) of 12 total results" in second and "[< Prev]" in second
    assert "Page 1 (1-10)" in env.step("click[< Prev]").observation
    env.step("click[B09SHOE002]")
    assert "Page 1 (1-10)" in env.step("click[< Prev]").observation  # item -> its results page
    assert env.step("click[Back to Search]").observation.endswith("[Search]")


def test_invalid_actions_explain_and_count(env: WebShopEnv) -> None:
    env.reset(goal(0))
    search_only = env.step("click[Search]")
    assert search_only.observation == (
        'Invalid action: "Search" is not clickable on this page. Use search[query] to search.'
    )
    env.step("search[shoes]")
    hidden = env.step("click[B09SHOE004]")  # on the page, but only 3 products are shown
    assert hidden.observation.startswith('Invalid action: "B09SHOE004" is not clickable')
    assert "Clickable: [Back to Search], [Next >], [B09SHOE001]" in hidden.observation
    no_bar = env.step("search[boots]").observation
    assert no_bar == "Invalid action: this page has no search bar; click[Back to Search] first."
    for action in ("dance", "buy[B09SHOE001]", "search[/]"):
        assert env.step(action).observation.startswith("Invalid action")
    assert env.step("think[I should open the first item]").observation == "OK."
    result = env.step("click[B09SHOE001]")
    assert "[Buy Now]" in result.observation
    assert result.info == {"won": False, "score": 0.0, "steps": 9} and not result.done


def test_step_limit_ends_the_episode(server: WebShopTestServer) -> None:
    env = make_env("webshop", {"base_url": server.url, "max_steps": 3})
    env.reset(goal(0))
    results = [env.step("search[shoes]"), env.step("click[B09SHOE001]"), env.step("click[9]")]
    assert [r.done for r in results] == [False, False, True]
    assert results[-1].observation.endswith("Step limit reached.")
    assert results[-1].info["truncated"] and not results[-1].info["won"]


def test_splits_are_the_papers_index_ranges() -> None:
    env = WebShopEnv(WebShopOptions())
    test = env.tasks("test", 1000)
    assert len(test) == 500 and test[0].task_id == "fixed_0" and test[-1].task_id == "fixed_499"
    assert env.tasks("validation", 2)[0].task_id == "fixed_500"
    train = env.tasks("train", 20000)
    assert train[0].task_id == "fixed_1500" and len(train) == 12087 - 1500
    assert env.tasks("test", 5, seed=3) != test[:5]
    small = WebShopEnv(WebShopOptions(num_goals=2))  # a server set up with `-d small`
    assert [t.task_id for t in small.tasks("test", 10)] == ["fixed_0", "fixed_1"]
    assert small.tasks("train", 10) == []
    with pytest.raises(ValueError, match="reads no data file"):
        make_env("webshop", data_path="/tmp/anything")


def test_trajectory_oracle_reports_the_purchase(env: WebShopEnv) -> None:
    actions = ["search[deodorant]", "click[B0DEO00001]", "click[lavender]", "click[Buy Now]"]
    first = env.trajectory_oracle(play(env, goal(1), actions), [])
    assert first.startswith('I bought B0DEO00001 ("Bright Citrus Deodorant for Sensitive Skin')
    assert "with scent lavender and scored 0.5" in first
    assert "The instruction names citrus, 3 ounce (pack of 1), which the item offered" in first
    ran_out = play(env, goal(1), ["search[deodorant]"] + ["think[hmm]"] * 14)
    text = env.trajectory_oracle(ran_out, [first])
    assert text.startswith("I ran out of steps before buying (searched: deodorant)")
    assert "Earlier purchases that scored below 1: B0DEO00001." in text


def test_no_expert_and_no_ground_truth(env: WebShopEnv) -> None:
    env.reset(goal(0))
    with pytest.raises(ValueError, match="no expert policy"):
        env.expert_action()
    with pytest.raises(ValueError, match="no ground-truth reflection"):
        env.ground_truth_reflection(goal(0))


def test_hidden_goal_on_the_done_page_is_never_read() -> None:
    page = parse_page(done_page({"asin": "B0SECRET", "goal_options": {}}, "B0X", {}, 0.25))
    assert page.score == 0.25
    text = page.render(set(), 3, 2000, show_instruction=True)
    assert "B0SECRET" not in text and "Reward Details" not in text


def test_server_down_is_a_clear_error_naming_the_url() -> None:
    url = closed_port_url()
    env = make_env("webshop", {"base_url": url, "retries": 1, "backoff_s": 0.01})
    with pytest.raises(WebShopServerError, match=f"WebShop server at {url} did not answer") as err:
        env.reset(goal(0))
    assert "after 2 tries" in str(err.value) and "env.options.base_url" in str(err.value)


def test_server_errors_are_clear(env: WebShopEnv) -> None:
    with pytest.raises(WebShopServerError, match=r"kept answering HTTP 500 for .*/fixed_7"):
        env.reset(goal(7))  # the stand-in holds 2 goals, as a small setup holds fewer


def test_cli_reports_a_down_server_and_the_missing_expert(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    url = closed_port_url()
    args = ["env", "play", "webshop", "--tasks", "1", "--json", "--option", f"base_url={url}"]
    assert main([*args, "--policy", "random", "--option", "retries=0"]) == EXIT_ENDPOINT
    assert f"WebShop server at {url}" in capsys.readouterr().err
    with WebShopTestServer() as running:
        args[-1] = f"base_url={running.url}"
        assert main([*args, "--policy", "expert"]) != 0
        assert "webshop has no expert policy" in capsys.readouterr().err
        assert main([*args, "--policy", "random"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["tasks"] == 1 and 0.0 <= result["mean_return"] <= 1.0


class Shopper:
    """A scripted actor: searches, then opens the first product shown."""

    async def act(self, env, trajectory, reflections, seed) -> ActorTurn:
        if not trajectory.steps:
            return ActorTurn(ParsedAction("action", "search[shirt]"))
        return ActorTurn(ParsedAction("action", f"click[{env.clickables()[-1]}]"))


def test_slow_server_does_not_block_the_other_episodes() -> None:
    """WebShop's HTTP calls run off the event loop: while one episode waits on the server the
    loop keeps running the others (and anything else on it). Judged by what happened, not by
    wall-clock bounds (they flaked on a loaded 2-core machine): the server held requests of
    several episodes at once, and the loop ticked while the server held a request (a blocking
    call on the loop thread would allow neither)."""
    assert WebShopEnv.blocking_io
    with WebShopTestServer(delay_s=0.3) as slow:
        loop = TrialLoop(
            lambda: make_env("webshop", {"base_url": slow.url, "retries": 0}),
            Shopper(),
            None,
            max_trials=1,
            max_steps=2,
        )

        async def main() -> tuple[int, list]:
            ticks_while_waiting = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks_while_waiting
                while not stop.is_set():
                    await asyncio.sleep(0.01)
                    ticks_while_waiting += slow.in_flight > 0

            ticking = asyncio.create_task(ticker())
            results = await loop.run_tasks([goal(0), goal(1), goal(0)], concurrency=3)
            stop.set()
            await ticking
            return ticks_while_waiting, results

        ticks, results = asyncio.run(main())
    assert all(len(r.trials[0].trajectory) > 0 for r in results)
    assert slow.max_in_flight >= 2, "the episodes waited on each other"
    assert ticks >= 3, f"the event loop ran only {ticks} times while the server held a request"

"""The inventory API of a real agent process: formats, filters, pagination, ETags, token, probes."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pyarrow.ipc
import pyarrow.parquet
import pytest

from tests.agent.support import AgentHandle, forecast_frame, free_port, prepare_served_state

ITEMS, HORIZON = 30, 14
API_TOKEN = "store-lan-token"
OPERATOR_TOKEN = "store-operator-token"
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentHandle]:
    """An agent serving a prepared scoring run; its server is unreachable (offline store)."""
    root = tmp_path_factory.mktemp("agent-api")
    dead_server = f"http://127.0.0.1:{free_port()}"
    handle = AgentHandle(
        root,
        dead_server,
        root / "none.pub",
        api={"token": API_TOKEN, "operator_token": OPERATOR_TOKEN, "default_page_size": 100},
    )
    prepare_served_state(handle.state_dir, ITEMS, HORIZON)
    handle.client.headers["Authorization"] = f"Bearer {API_TOKEN}"
    handle.start()
    handle.wait_serving(1, timeout=30)
    yield handle
    handle.close()


def _expected(horizon: int = HORIZON, items: list[str] | None = None) -> pl.DataFrame:
    frame = forecast_frame(ITEMS, HORIZON).with_columns(pl.col("model_version").cast(pl.Int64))
    frame = frame.with_columns(step=pl.int_range(1, pl.len() + 1).over("item_id")).filter(
        pl.col("step") <= horizon
    )
    if items:
        frame = frame.filter(pl.col("item_id").is_in(items))
    return frame.drop("step").sort("item_id", "ds")


def _normalise(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(
        pl.col("ds").cast(pl.Utf8).str.to_date(), pl.col("model_version").cast(pl.Int64)
    ).sort("item_id", "ds")


def test_every_format_parses_back_to_the_same_rows(agent: AgentHandle) -> None:
    """JSON, CSV, Parquet and Arrow IPC of one query hold identical rows, each read by its own library."""
    params = {"horizon": 7, "item_id": ["I00003", "I00001"]}
    as_json = agent.client.get("/v1/forecasts", params=params)
    as_csv = agent.client.get("/v1/forecasts", params=params, headers={"Accept": "text/csv"})
    as_parquet = agent.client.get("/v1/forecasts", params={**params, "format": "parquet"})
    as_arrow = agent.client.get(
        "/v1/forecasts", params=params, headers={"Accept": "application/vnd.apache.arrow.stream"}
    )
    for response in (as_json, as_csv, as_parquet, as_arrow):
        assert response.status_code == 200, response.text
    assert as_csv.headers["content-type"].startswith("text/csv")
    json_rows = pl.DataFrame(as_json.json()["rows"])
    csv_rows = pl.read_csv(io.BytesIO(as_csv.content))
    parquet_rows = pl.from_arrow(pyarrow.parquet.read_table(io.BytesIO(as_parquet.content)))
    arrow_rows = pl.from_arrow(pyarrow.ipc.open_stream(as_arrow.content).read_all())
    assert isinstance(parquet_rows, pl.DataFrame) and isinstance(arrow_rows, pl.DataFrame)
    expected = _expected(7, ["I00001", "I00003"])
    for frame in (json_rows, csv_rows, parquet_rows, arrow_rows):
        got = _normalise(frame).select(expected.columns)
        assert got.equals(expected.select(expected.columns)), got


def test_item_endpoint_matches_listing_and_intervals_are_ordered(agent: AgentHandle) -> None:
    """GET /v1/forecasts/{item} returns the item's rows with intervals lo <= forecast <= hi."""
    body = agent.client.get("/v1/forecasts/I00005").json()
    assert body["model_version"] == 1 and body["item_id"] == "I00005"
    rows = pl.DataFrame(body["rows"])
    assert rows.height == HORIZON
    assert (rows["forecast-lo-95"] <= rows["forecast-lo-80"]).all()
    assert (rows["forecast-lo-80"] <= rows["forecast"]).all() and (
        rows["forecast"] <= rows["forecast-hi-80"]
    ).all()
    assert _normalise(rows).select(_expected(items=["I00005"]).columns).equals(_expected(items=["I00005"]))
    as_arrow = agent.client.get("/v1/forecasts/I00005", params={"format": "arrow", "horizon": 3})
    assert pa.ipc.open_stream(as_arrow.content).read_all().num_rows == 3
    assert agent.client.get("/v1/forecasts/NOPE").status_code == 404


def test_cursor_pagination_walks_every_row_once(agent: AgentHandle) -> None:
    """Following next_cursor with a category filter visits every matching row exactly once."""
    seen: list[tuple[str, str]] = []
    params: dict[str, object] = {"category": "cat2", "limit": 25}
    for _ in range(50):
        body = agent.client.get("/v1/forecasts", params=params).json()
        seen += [(r["item_id"], r["ds"]) for r in body["rows"]]
        if not body["next_cursor"]:
            break
        params["cursor"] = body["next_cursor"]
    expected = _expected().filter(pl.col("category") == "cat2")
    assert len(seen) == len(set(seen)) == expected.height
    bad = agent.client.get(
        "/v1/forecasts", params={"category": "cat3", "cursor": params["cursor"], "limit": 25}
    )
    assert bad.status_code == 400


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_following_link_walks_every_page_with_every_filter(agent: AgentHandle, fmt: str) -> None:
    """A client that only follows `Link: rel="next"` (resolved per RFC 3986) keeps item, horizon, format
    and limit filters on every page and gets each matching row once; media types carry one charset."""
    items = ["I00001", "I00004", "I00007", "I00010", "I00013"]
    url: str | None = str(
        agent.client.build_request(
            "GET", "/v1/forecasts", params={"item_id": items, "horizon": 5, "limit": 4, "format": fmt}
        ).url
    )
    seen: list[tuple[str, str]] = []
    pages = 0
    while url is not None:
        response = agent.client.get(url)
        assert response.status_code == 200, response.text
        pages += 1
        ctype = response.headers["content-type"]
        assert ctype.count("charset") <= 1, ctype
        assert ctype.split(";")[0] == ("application/json" if fmt == "json" else "text/csv")
        frame = pl.DataFrame(response.json()["rows"]) if fmt == "json" else pl.read_csv(response.content)
        seen += list(zip(frame["item_id"].to_list(), [str(d) for d in frame["ds"].to_list()], strict=True))
        link = response.links.get("next")
        url = str(response.url.join(link["url"])) if link else None
    expected = _expected(5, items)
    assert pages == -(-expected.height // 4)
    assert sorted(seen) == sorted(zip(expected["item_id"], [str(d) for d in expected["ds"]], strict=True))
    assert len(seen) == len(set(seen))


def test_forecast_answers_say_where_history_ends_and_forecasts_start(agent: AgentHandle) -> None:
    """Headers and JSON bodies carry forecast_start (the first day served) and history_end."""
    listing = agent.client.get("/v1/forecasts", params={"item_id": "I00001"})
    assert listing.headers["x-forecast-start"] == listing.json()["forecast_start"] == "2026-01-01"
    assert "history_end" in listing.json() and listing.headers["x-history-end"]
    item = agent.client.get("/v1/forecasts/I00001", headers={"Accept": "text/csv"})
    assert item.headers["x-forecast-start"] == "2026-01-01"
    assert item.headers["content-type"] == "text/csv; charset=utf-8"


def test_every_served_media_type_is_in_the_openapi_document(agent: AgentHandle) -> None:
    """Each format a forecast route answers in, and the problem body of its errors, is in /schema."""
    document = agent.client.get("/schema/openapi.json").json()
    bad = agent.client.get("/v1/forecasts", params={"horizon": 0})
    assert bad.status_code == 400
    for path, url in (
        ("/v1/forecasts", "/v1/forecasts"),
        ("/v1/forecasts/{item_id}", "/v1/forecasts/I00001"),
    ):
        responses = document["paths"][path]["get"]["responses"]
        documented = set(responses["200"]["content"])
        for fmt in ("json", "csv", "parquet", "arrow"):
            served = agent.client.get(url, params={"format": fmt, "horizon": 2})
            assert served.status_code == 200
            assert served.headers["content-type"].split(";")[0] in documented, (path, fmt, documented)
        assert bad.headers["content-type"] in responses["default"]["content"]
        problem = responses["default"]["content"]["application/problem+json"]["schema"]
        assert set(bad.json()) <= set(problem["properties"]) and set(problem["required"]) <= set(bad.json())


def test_strong_etag_and_304(agent: AgentHandle) -> None:
    """The same query gets the same strong ETag and If-None-Match answers 304; another query differs."""
    first = agent.client.get("/v1/forecasts/I00002")
    etag = first.headers["etag"]
    assert etag.startswith('"') and not etag.startswith("W/")
    again = agent.client.get("/v1/forecasts/I00002", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    other = agent.client.get("/v1/forecasts/I00002", params={"horizon": 3})
    assert other.headers["etag"] != etag
    listing = agent.client.get("/v1/forecasts", params={"category": "cat1"})
    assert (
        agent.client.get(
            "/v1/forecasts", params={"category": "cat1"}, headers={"If-None-Match": listing.headers["etag"]}
        ).status_code
        == 304
    )


def test_api_token_guards_v1_but_not_probes(agent: AgentHandle) -> None:
    """Without the API token /v1 answers 401 as problem details, the read token cannot post sales,
    score or roll back (403); /livez and /metrics stay open."""
    anonymous = httpx.get(f"{agent.url}/v1/forecasts/I00001", timeout=5)
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"].startswith("application/problem+json")
    for path in ("/v1/sales", "/v1/score", "/v1/rollback"):
        refused = agent.client.post(path, content=b"{}", headers={"Content-Type": "application/json"})
        assert refused.status_code == 403, (path, refused.text)
        assert "operator token" in refused.json()["title"] + refused.json().get("detail", "")
    assert httpx.get(f"{agent.url}/livez", timeout=5).status_code == 200
    metrics = httpx.get(f"{agent.url}/metrics", timeout=5)
    assert "shelfcast_agent_http_requests_total" in metrics.text


def test_bad_requests_are_problem_details(agent: AgentHandle) -> None:
    """A horizon over the cap, an unknown format and a bad limit are 4xx problem details."""
    assert agent.client.get("/v1/forecasts", params={"horizon": 10_000}).status_code == 400
    assert agent.client.get("/v1/forecasts", headers={"Accept": "image/png"}).status_code == 406
    assert agent.client.get("/v1/forecasts", params={"limit": 0}).status_code == 400


def test_not_ready_without_an_active_model_but_schema_served(agent: AgentHandle) -> None:
    """Serving old forecasts with no committed model is not 'ready'; /schema documents the API."""
    assert agent.client.get("/readyz").status_code == 503
    schema = agent.client.get("/schema/openapi.json").json()
    assert "/v1/forecasts/{item_id}" in schema["paths"]


def test_sales_upload_in_three_formats(agent: AgentHandle, tmp_path: Path) -> None:
    """POST /v1/sales accepts CSV, Parquet and JSON and reports quarantined rows with reasons."""
    csv = b"store_id,item_id,category,ds,y\nS001,I00001,cat0,2025-01-01,4\nS001,I00001,cat0,2025-01-02,oops\n"
    answer = agent.client.post(
        "/v1/sales", content=csv, headers={**OPERATOR, "Content-Type": "text/csv"}
    ).json()
    assert answer["rows_accepted"] == 1 and answer["rows_quarantined"] == 1
    buffer = io.BytesIO()
    pl.DataFrame(
        {"store_id": ["S001"], "item_id": ["I00002"], "category": ["cat0"], "ds": ["2025-01-01"], "y": [2.0]}
    ).write_parquet(buffer)
    answer = agent.client.post(
        "/v1/sales",
        content=buffer.getvalue(),
        headers={**OPERATOR, "Content-Type": "application/vnd.apache.parquet"},
    ).json()
    assert answer["rows_accepted"] == 1
    rows = [{"store_id": "S001", "item_id": "I00003", "category": "cat0", "ds": "2025-01-01", "y": 1}]
    assert agent.client.post("/v1/sales", json=rows, headers=OPERATOR).json()["rows_accepted"] == 1
    png = agent.client.post("/v1/sales", content=b"x", headers={**OPERATOR, "Content-Type": "image/png"})
    assert png.status_code == 415

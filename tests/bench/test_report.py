"""The benchmark's table and its peer column's config (bench/report.py, bench/peer.py): pure
logic, no server."""

import importlib.util

import pytest

from bench import peer, report, run


def _run(round_: int, tok_s: float, ttft: float) -> dict[str, float]:
    figures = dict.fromkeys(
        ("p99_ttft_ms", "median_tpot_ms", "median_itl_ms", "p99_itl_ms", "longest_pause_ms"), 10.0
    )
    figures["paused_ms"] = 0.0 if tok_s > 3500 else 800.0
    return {"round": round_, "output_throughput": tok_s, "median_ttft_ms": ttft, **figures}


def _result(servers: dict[str, list[tuple[float, float]]]) -> dict:
    runs = {
        name: [_run(i, tok_s, ttft) for i, (tok_s, ttft) in enumerate(figures)]
        for name, figures in servers.items()
    }
    medians = {name: {**rs[len(rs) // 2]} for name, rs in runs.items()}
    workload = {"name": "overhead", "served_name": "tiny", "input_len": 64, "output_len": 64,
                "prompts": 200, "concurrency": 32}  # fmt: skip
    return {"workload": workload, "runs": runs, "medians": medians, "jobs": []}


def test_two_servers_are_compared_with_vllms():
    text = report.table([_result({"vllm": [(4000, 80)], "ours": [(3000, 100)]})])
    assert "| metric | vLLM's server | this app | this app / vLLM |" in text
    assert "| output tok/s | 4000 | 3000 | 0.75x |" in text
    assert "| median TTFT (ms) | 80 | 100 | +20 ms |" in text
    assert "Each run, output tok/s: vLLM's 4000, this app 3000; median TTFT (ms): " in text
    assert "Ray Serve LLM" not in text


def test_the_placements_of_a_workload_share_one_table_side_by_side():
    same = _result({"vllm": [(4000, 80)], "ours": [(3000, 100)]})
    own = _result({"vllm": [(2000, 90)], "ours": [(2400, 150)]})
    own["workload"] = {**own["workload"], "placement": "own"}
    text = report.table([same, own])
    assert text.count("**overhead**") == 1
    assert (
        "| metric | vLLM's server (same) | this app (same) | this app / vLLM (same) "
        "| vLLM's server (own) | this app (own) | this app / vLLM (own) |" in text
    )
    assert "| output tok/s | 4000 | 3000 | 0.75x | 2000 | 2400 | 1.20x |" in text
    assert "| median TTFT (ms) | 80 | 100 | +20 ms | 90 | 150 | +60 ms |" in text
    assert "`own`: Each run, output tok/s: vLLM's 2000, this app 2400;" in text


def test_time_paused_is_compared_as_a_difference():
    text = report.table([_result({"vllm": [(4000, 80)], "ours": [(3000, 100)]})])
    assert (
        "| time all streams paused, over 4 median ITLs (ms per run) | 0 | 800 | +800 ms |" in text
    )
    assert report.ratio(800.0, 0.0) == "n/a"  # a run of vLLM's server without a pause
    assert report.ratio(3000.0, 4000.0) == "0.75x"


def _figures(median_itl_ms: float) -> dict:
    """Two streams whose tokens reach the client at 10, 15, 20, 200, 210 and 310 ms."""
    return {
        "start_times": [0.0, 0.0],
        "ttfts": [0.010, 0.015],
        "itls": [[0.010, 0.180], [0.195, 0.100]],
        "median_itl_ms": median_itl_ms,
    }


def test_pauses_are_the_gaps_in_which_no_stream_got_a_token():
    assert run.pauses(_figures(10.0))["longest_pause_ms"] == pytest.approx(180.0)
    # Over 4 median ITLs (40 ms): the gaps of 180 and 100 ms, not those of 5 and 10 ms.
    assert run.pauses(_figures(10.0))["paused_ms"] == pytest.approx(280.0)
    assert run.pauses(_figures(30.0))["paused_ms"] == pytest.approx(180.0)  # over 120 ms
    assert run.pauses(_figures(50.0))["paused_ms"] == 0.0  # over 200 ms: none
    # Tokens in batches (median ITL 0): every gap between them counts, first to last token.
    assert run.pauses(_figures(0.0))["paused_ms"] == pytest.approx(300.0)


def test_deliveries_count_tokens_per_chunk_and_chunks_per_read_of_each_stream():
    figures = {
        "output_lens": [6, 4, 0],
        "ttfts": [0.010, 0.020, 0.0],  # the third request failed: not counted
        # Stream 1: 5 chunks in 3 reads (two pairs under 1 ms apart); stream 2: 4 in 4 reads.
        "itls": [[0.0002, 0.004, 0.0001, 0.005], [0.004, 0.004, 0.004], []],
    }
    found = run.deliveries(figures)
    assert found["tokens_per_chunk"] == pytest.approx(10 / 9)
    assert found["chunks_per_delivery"] == pytest.approx(9 / 7)
    assert run.deliveries({"output_lens": [], "ttfts": [], "itls": []}) == {
        "tokens_per_chunk": 0.0,
        "chunks_per_delivery": 0.0,
    }


def test_past_haproxy_the_replica_listens_on_the_clients_port_and_haproxy_elsewhere(monkeypatch):
    started = {}
    monkeypatch.setattr(run, "our_server", lambda w, port, log: started.update(w=w, port=port))
    workload = run.Workload("overhead", "/models/tiny", "tiny", 64, 64, 200, 32)
    run.our_server_past_haproxy(workload, 30123, None)
    assert started["w"].env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "30123"
    assert started["w"].env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"] == "30124"
    assert started["port"] != 30123  # HAProxy's


def test_without_matplotlib_the_benchmark_stops_before_its_runs_saying_what_to_do(monkeypatch):
    real = importlib.util.find_spec

    def matplotlib_installed(installed: bool):
        def find_spec(name, *args):
            if name == "matplotlib":
                return real("json") if installed else None
            return real(name, *args)

        return find_spec

    monkeypatch.setattr(importlib.util, "find_spec", matplotlib_installed(False))
    with pytest.raises(SystemExit, match="make bench"):
        report.check_plotting()
    monkeypatch.setattr(importlib.util, "find_spec", matplotlib_installed(True))
    report.check_plotting()  # no complaint


def test_the_peer_gets_a_column_and_a_ratio_of_its_own():
    servers = {
        "vllm": [(4000, 80), (4200, 70)],
        "ours": [(3000, 100), (3100, 90)],
        "rayllm": [(1200, 250), (1300, 240)],
    }
    result = _result(servers)
    text = report.table([result])
    assert (
        "| metric | vLLM's server | this app | Ray Serve LLM | this app / vLLM "
        "| Ray Serve LLM / vLLM |\n|---|---|---|---|---|---|" in text
    )
    assert "| output tok/s | 4200 | 3100 | 1300 | 0.74x | 0.31x |" in text
    assert "| median TTFT (ms) | 70 | 90 | 240 | +20 ms | +170 ms |" in text
    assert "Ray Serve LLM 1200 / 1300; median TTFT (ms): " in text


def test_the_peer_serves_the_same_engine_arguments_under_the_same_name():
    engine = {"model": "/models/tiny", "served_model_name": ["tiny"], "dtype": "float32",
              "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30}  # fmt: skip
    config = peer.app_config("tiny", engine, 8123)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = config["applications"]
    assert app["import_path"] == "ray.serve.llm:build_openai_app"
    (llm,) = app["args"]["llm_configs"]
    assert llm["model_loading_config"] == {"model_id": "tiny", "model_source": "/models/tiny"}
    assert llm["engine_kwargs"] == {
        "dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 1 << 30
    }  # fmt: skip
    assert llm["accelerator_config"] == {"kind": "cpu"}


def test_the_direct_streaming_peer_has_no_ingress_of_its_own_to_configure():
    engine = {"model": "/models/tiny", "dtype": "float32"}
    shipped = peer.app_config("tiny", engine, 8123)["applications"][0]["args"]
    direct = peer.app_config("tiny", engine, 8123, direct_streaming=True)["applications"][0]["args"]
    assert "ingress_deployment_config" in shipped  # its own ingress deployment, at no CPU
    # Ray Serve LLM refuses an ingress_deployment_config with direct streaming.
    assert direct == {"llm_configs": shipped["llm_configs"]}
    assert peer.DIRECT_STREAMING_ENV["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] == "1"
    assert peer.DIRECT_STREAMING_ENV["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    text = report.table([_result({"vllm": [(4000, 80)], "rayllm-direct": [(2000, 120)]})])
    assert "| metric | vLLM's server | Ray Serve LLM, direct streaming |" in text

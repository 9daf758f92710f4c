"""bench/plots.py's peers figure, drawn from a result (matplotlib is in the test extra)."""

from __future__ import annotations

from pathlib import Path

from tests.bench.test_peer_report import document


def test_the_peers_figure_has_a_bar_per_server_with_numbers(tmp_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    from bench.plots import plot_peers

    path = plot_peers(document(), tmp_path)
    svg = path.read_text()
    assert path.name == "peers.svg"
    for text in ("Flask", "modelwatch", "answers per second, c=32", "8,000", "1,000", "0.20"):
        assert text in svg
    assert "ray_serve" not in svg  # no numbers: no bar


def test_the_ray_serve_figure_draws_both_sides_for_each_transport(tmp_path: Path) -> None:
    import json

    import matplotlib
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    from bench.plots import plot_ray_serve

    result = json.loads((Path(__file__).resolve().parents[2] / "bench" / "results"
                         / "ray_serve.json").read_text())
    svg = plot_ray_serve(result, tmp_path).read_text()
    at_32 = [f"{result['median'][run]['32']['throughput_rps']:,.0f}" for run in result["median"]]
    for text in ("REST (hey)", "gRPC (h2load)", "Ray cluster: 2 replicas, HAProxy",
                 "modelwatch serve", *at_32):
        assert text in svg

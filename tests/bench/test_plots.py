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

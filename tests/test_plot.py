"""Figures: the genotype drawing and the search plots are written without touching matplotlib's backend."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bmnas.core.genotype import FeatureSpec
from bmnas.report.plots import plot_genotype
from bmnas.space.baselines import baseline

SRC = str(Path(__file__).resolve().parents[1] / "src")
PNG = b"\x89PNG\r\n\x1a\n"
FEATURES = [FeatureSpec("image.conv", 16, 4), FeatureSpec("image.fc", 32, 1), FeatureSpec("audio.fc", 8, 1)]


@pytest.mark.parametrize("name", ["sum", "late_fusion", "unimodal:audio"])
def test_drawing_a_genotype_writes_a_png(tmp_path, name):
    g = baseline(name, FEATURES, C=8, L=4)
    for genotype in (g, g.with_linear(("image.fc", "audio.fc"))):  # with and without the linear path
        path = tmp_path / f"{name}{len(genotype.linear)}.png"
        assert plot_genotype(genotype, path) == path
        assert path.read_bytes()[:8] == PNG


def test_importing_and_plotting_leave_the_matplotlib_backend_alone(tmp_path):
    code = (
        "import sys, matplotlib\n"
        "from bmnas.space.baselines import baseline\n"
        "from bmnas.core.genotype import FeatureSpec\n"
        "import bmnas.report.plots, bmnas.report.study_plots, bmnas.cli.main\n"
        "g = baseline('sum', [FeatureSpec('a.x', 4, 1), FeatureSpec('b.y', 4, 1)], C=4, L=1)\n"
        f"bmnas.report.plots.plot_genotype(g, {str(tmp_path / 'g.png')!r})\n"
        f"bmnas.report.study_plots.trials_chart([0, 1], [0.5, 0.6], 'f1', {str(tmp_path / 't.png')!r})\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": SRC, "MPLBACKEND": "svg", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "g.png").read_bytes()[:8] == PNG and (tmp_path / "t.png").read_bytes()[:8] == PNG

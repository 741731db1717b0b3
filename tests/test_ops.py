"""Each primitive op against its formula on hand-made tensors (docs/DESIGN.md §5)."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bmnas.core.config import Config, ConfigError
from bmnas.core.opnames import BUILTIN_OPS, DEFAULT_OPS
from bmnas.space.ops import create_op, get_op, list_ops, register_op

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_sum_is_x_plus_y():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    y = torch.tensor([[[10.0, 20.0], [30.0, 40.0]]])
    assert torch.equal(create_op("sum", 2, 2)(x, y), torch.tensor([[[11.0, 22.0], [33.0, 44.0]]]))


def test_zero_outputs_zeros():
    x = torch.randn(3, 4, 5)
    assert torch.equal(create_op("zero", 5, 4)(x, x), torch.zeros(3, 4, 5))


def test_attention_matches_softmax_formula_by_hand():
    # L = 2 positions, C = 2 channels; rows are positions (channels last).
    op = create_op("attention", C=2, L=2, dropout=0.0).eval()
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    a = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1)  # 0.66976...
    expected_pre_norm = torch.tensor([[[a, 1 - a], [1 - a, a]]])
    op.norm = nn.Identity()
    assert torch.allclose(op(x, y), expected_pre_norm, atol=1e-6)
    assert a == pytest.approx(0.669761, abs=1e-6)


def test_attention_is_layernormed_over_L_and_C_and_asymmetric():
    torch.manual_seed(0)
    op = create_op("attention", C=4, L=3, dropout=0.0).eval()
    x, y = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    scores = torch.einsum("blc,bmc->blm", x, y) / 2.0  # √C = 2
    ref = torch.nn.functional.layer_norm(scores.softmax(-1) @ y, [3, 4])
    assert torch.allclose(op(x, y), ref, atol=1e-5)
    assert not torch.allclose(op(x, y), op(y, x), atol=1e-3)  # query x, key/value y


def test_linear_glu_formula():
    op = create_op("linear_glu", C=2, L=1)
    with torch.no_grad():
        op.value.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 3.0]]))
        op.value.bias.zero_()
        op.gate.weight.zero_()
        op.gate.bias.copy_(torch.tensor([0.0, 100.0]))
    x = torch.tensor([[[1.0, 1.0]]])
    y = torch.tensor([[[5.0, -5.0]]])
    # (W1 x) ⊙ σ(W2 y + b2) = [2, 3] ⊙ [σ(0), σ(100)] = [1, 3]
    assert torch.allclose(op(x, y), torch.tensor([[[1.0, 3.0]]]), atol=1e-6)


def test_concat_fc_formula_in_eval_mode():
    torch.manual_seed(0)
    op = create_op("concat_fc", C=3, L=2, dropout=0.5).eval()  # eval: BN uses running (0, 1), no dropout
    x, y = torch.randn(4, 2, 3), torch.randn(4, 2, 3)
    ref = torch.relu(torch.cat([x, y], -1) @ op.fc.weight.t() + op.fc.bias) / math.sqrt(1 + op.bn.eps)
    assert torch.allclose(op(x, y), ref, atol=1e-6)


def test_unknown_op_lists_registered_names():
    with pytest.raises(KeyError, match="registered ops: .*attention"):
        get_op("atention")


def test_user_ops_binary_and_ternary():
    @register_op("test_product")
    class Product(nn.Module):
        def __init__(self, C, L, dropout):
            super().__init__()

        def forward(self, x, y):
            return x * y

    @register_op("test_sum3", arity=3)
    def sum3(C, L, dropout):
        class Sum3(nn.Module):
            def forward(self, a, b, c):
                return a + b + c

        return Sum3()

    assert {"test_product", "test_sum3"} <= set(list_ops("test_*"))
    assert get_op("test_sum3").arity == 3
    x = torch.full((1, 1, 2), 2.0)
    assert torch.equal(create_op("test_product", 2, 1)(x, x), torch.full((1, 1, 2), 4.0))
    assert torch.equal(create_op("test_sum3", 2, 1)(x, x, x), torch.full((1, 1, 2), 6.0))


def test_op_names_match_the_registry_and_configs_check_them():
    assert set(BUILTIN_OPS) <= set(list_ops()) and set(DEFAULT_OPS) <= set(BUILTIN_OPS)
    with pytest.raises(ConfigError, match="model.ops: unknown op 'atention'; registered ops: .*attention"):
        Config.from_sources(overrides=["model.ops=[sum,atention]"])

    @register_op("test_config_op")
    def factory(C, L, dropout):
        return nn.Identity()

    assert Config.from_sources(overrides=["model.ops=[sum,test_config_op]"]).model.ops == (
        "sum",
        "test_config_op",
    )


def test_reading_a_config_does_not_import_torch():
    code = (
        "import sys, bmnas.core.config; "
        "bmnas.core.config.Config.from_sources(overrides=['model.ops=[zero,sum]']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

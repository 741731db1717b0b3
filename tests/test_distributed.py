"""α, β, γ are ordinary parameters: DistributedDataParallel reduces their gradients like any weight."""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bmnas.genotype import FeatureSpec
from bmnas.hypernet import HyperNet

FEATS = (FeatureSpec("a.f1", 5, 1), FeatureSpec("a.f2", 6, 4), FeatureSpec("b.f1", 7, 4))


def test_hypernet_under_ddp_updates_architecture_parameters(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        net = HyperNet(FEATS, 3, C=8, L=4, num_cells=2, num_steps=1, ops=("sum", "attention"))
        ddp = DistributedDataParallel(net)
        managed = {id(p) for p in ddp.parameters()}
        assert all(id(p) in managed for p in net.arch_parameters())
        before = [p.detach().clone() for p in net.arch_parameters()]
        opt = torch.optim.Adam(net.arch_parameters(), lr=0.1)
        feats = {f.name: torch.randn(4, f.length, f.channels) for f in FEATS}
        ddp(feats).logsumexp(-1).mean().backward()
        opt.step()
        assert all(not torch.equal(b, p) for b, p in zip(before, net.arch_parameters(), strict=True))
    finally:
        dist.destroy_process_group()

#!/usr/bin/env python3
"""A plain PyTorch HPU-Net with the release's layer list, to time the same training step in torch.

The project's speed reference (benchmarks/RESULTS.md, docs/benchmarks.md): the
network of docs/model.md (21,877,230 parameters at the LIDC defaults, the
posterior's unused tail included), trained with the plain ELBO (no top-k, no
GECO, no L2) on fake data: the mean time of `--steps` training steps after
one warm-up step, to compare with `python -m benchmarks.throughput` on the
same machine.

torch is never a dependency of the package: run this script from its own
virtualenv with torch installed (`TORCH_VENV` below), from the repository root:

    TORCH_VENV/bin/python benchmarks/torch_hpunet.py --batch 8 --size 128 --steps 5

It prints one JSON line: {"framework": "torch", "images_per_s": ..., ...}.
Nothing imports this file, and pytest does not collect it (pytest.ini's
testpaths is tests/).
"""
import argparse, json, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResBlock(nn.Module):
    def __init__(self, cin, out, down, convs=3):
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(cin if i == 0 else down, down, 3, padding=1) for i in range(convs)])
        self.skip = nn.Conv2d(cin, out, 1) if cin != out else None
        self.proj = nn.Conv2d(down, out, 1) if down != out else None

    def forward(self, x):
        r = F.relu(x)
        for i, conv in enumerate(self.convs):
            r = conv(r)
            if i < len(self.convs) - 1:
                r = F.relu(r)
        skip = self.skip(x) if self.skip is not None else x
        if self.proj is not None:
            r = self.proj(r)
        return skip + r


def stack(cin, out, down, blocks):
    return nn.ModuleList([ResBlock(cin if b == 0 else out, out, down) for b in range(blocks)])


class Core(nn.Module):
    def __init__(self, cin, channels, down, latent_dims, blocks):
        super().__init__()
        self.latent_dims = latent_dims
        self.encoder = nn.ModuleList()
        c = cin
        for out, d in zip(channels, down):
            self.encoder.append(stack(c, out, d, blocks))
            c = out
        self.heads, self.decoder = nn.ModuleList(), nn.ModuleList()
        f = channels[-1]
        for i, ld in enumerate(latent_dims):
            self.heads.append(nn.Conv2d(f, 2 * ld, 1))
            out, d = channels[-(i + 2)], down[-(i + 2)]
            self.decoder.append(stack(ld + f + out, out, d, blocks))
            f = out

    def forward(self, x, z_given=None):
        enc, f = [], x
        for level, blocks in enumerate(self.encoder):
            for block in blocks:
                f = block(f)
            enc.append(f)
            if level < len(self.encoder) - 1:
                f = F.avg_pool2d(f, 2)
        f, dists, latents = enc[-1], [], []
        for i, ld in enumerate(self.latent_dims):
            mu_logsigma = self.heads[i](f)
            mu, log_sigma = mu_logsigma[:, :ld], mu_logsigma[:, ld:]
            dists.append((mu, log_sigma))
            z = z_given[i] if z_given is not None else mu + torch.exp(log_sigma) * torch.randn_like(mu)
            latents.append(z)
            f = F.interpolate(torch.cat([z, f], 1), scale_factor=2, mode="nearest")
            f = torch.cat([f, enc[-(i + 2)]], 1)
            for block in self.decoder[i]:
                f = block(f)
        return f, enc, dists, latents


class HPUNet(nn.Module):
    def __init__(self, channels, down, latent_dims, num_classes=2, img_ch=1, blocks=3):
        super().__init__()
        self.channels, self.latent_dims = channels, latent_dims
        self.prior = Core(img_ch, channels, down, latent_dims, blocks)
        self.posterior = Core(img_ch + num_classes, channels, down, latent_dims, blocks)
        self.stitch = nn.ModuleList()
        f = channels[-(len(latent_dims) + 1)]
        for j in range(len(latent_dims) + 1, len(channels)):
            out, d = channels[-(j + 1)], down[-(j + 1)]
            self.stitch.append(stack(f + out, out, d, blocks))
            f = out
        self.logits = nn.Conv2d(f, num_classes, 1)

    def loss(self, img, seg):
        _, _, q, z_q = self.posterior(torch.cat([seg, img], 1))
        f, enc, p, _ = self.prior(img, z_given=z_q)
        for k, j in enumerate(range(len(self.latent_dims) + 1, len(self.channels))):
            f = torch.cat([F.interpolate(f, scale_factor=2, mode="nearest"), enc[-(j + 1)]], 1)
            for block in self.stitch[k]:
                f = block(f)
        logits = self.logits(f)
        rec = -(F.log_softmax(logits, 1) * seg).sum(1).sum((1, 2)).mean()
        kl = 0.0
        for (mq, lq), (mp, lp) in zip(q, p):
            kl = kl + (lp - lq + (torch.exp(2 * lq) + (mq - mp) ** 2)
                       / (2 * torch.exp(2 * lp)) - 0.5).sum((1, 2, 3)).mean()
        return rec + kl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    base = 24
    channels = (base, 2 * base, 4 * base) + (8 * base,) * 5
    down = tuple(c // 2 for c in channels)
    model = HPUNet(channels, down, (1, 1, 1, 1))
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    img = torch.rand(a.batch, 1, a.size, a.size)
    seg = F.one_hot((torch.rand(a.batch, a.size, a.size) > 0.9).long(), 2).permute(0, 3, 1, 2).float()

    def step():
        opt.zero_grad()
        loss = model.loss(img, seg)
        loss.backward()
        opt.step()
        return loss

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = (time.perf_counter() - t) / a.steps
    print(json.dumps({"framework": "torch", "version": torch.__version__, "params": params,
                      "batch": a.batch, "size": a.size, "threads": torch.get_num_threads(),
                      "step_s": round(dt, 4), "images_per_s": round(a.batch / dt, 3)}))


if __name__ == "__main__":
    main()

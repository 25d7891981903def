"""A PyTorch re-implementation of UR-DMU's `WSAD` written from shared/reference/urdmu.md.

Used only by the tests as "the reference implementation": module names reproduce the
reference's state_dict keys, and the forward reproduces its quirks. `noise` lets a test feed
the reparameterisation the same standard normal draw as the JAX port. The model follows the
reference's fixed code (commit 152c4dc); `anchor_at_abnormal_index=True` is its first commit,
which gathered anchor_new at the abnormal half's top-k indices.
"""
import math

import torch
from torch import nn


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x):
        return self.fn(self.norm(x))


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head, dropout):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = nn.Linear(dim, 4 * heads * dim_head, bias=False)
        self.to_out = nn.Sequential(nn.Linear(2 * heads * dim_head, dim), nn.Dropout(dropout))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v, t = (u.reshape(b, n, self.heads, -1).permute(0, 2, 1, 3) for u in self.to_qkv(x).chunk(4, dim=-1))
        glob = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1) @ v
        pos = torch.linspace(1, n, n)
        dist = torch.abs(pos * torch.ones(n) - pos.view(-1, 1))
        local = torch.exp(-dist / torch.exp(torch.tensor(1.0)))
        local = local / local.sum(-1)  # broadcasting: [i, j] / sum of row j (the quirk)
        out = torch.cat([glob, local @ t], dim=-1)
        return self.to_out(out.permute(0, 2, 1, 3).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden, dropout):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim),
                                 nn.Dropout(dropout))

    def forward(self, x):
        return self.net(x)


class Transformer(nn.Module):
    def __init__(self, dim, depth, heads, dim_head, mlp_dim, dropout):
        super().__init__()
        self.layers = nn.ModuleList([
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, dropout)),
                           PreNorm(dim, FeedForward(dim, mlp_dim, dropout))]) for _ in range(depth)
        ])

    def forward(self, x):
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class Temporal(nn.Module):
    def __init__(self, input_size, out_size):
        super().__init__()
        self.conv_1 = nn.Sequential(nn.Conv1d(input_size, out_size, kernel_size=3, stride=1, padding=1), nn.ReLU())

    def forward(self, x):
        return self.conv_1(x.permute(0, 2, 1)).permute(0, 2, 1)


class MemoryUnit(nn.Module):
    def __init__(self, nums, dim):
        super().__init__()
        self.dim, self.nums = dim, nums
        self.memory_block = nn.Parameter(torch.empty(nums, dim))
        bound = 1.0 / math.sqrt(dim)
        self.memory_block.data.uniform_(-bound, bound)

    def forward(self, data):
        att = torch.sigmoid(torch.einsum("btd,kd->btk", data, self.memory_block) / self.dim**0.5)
        score = torch.topk(att, self.nums // 16 + 1, dim=-1)[0].mean(-1)
        return score, torch.einsum("btk,kd->btd", att, self.memory_block)


class ADCLS(nn.Module):
    def __init__(self, input_dim, hidden):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def forward(self, x):
        return self.mlp(x)


def _gather_mean(x, index):
    return torch.gather(x, 1, index.unsqueeze(2).expand(-1, -1, x.size(-1))).mean(1)


class WSAD(nn.Module):
    def __init__(self, input_size, a_nums=60, n_nums=60, anchor_at_abnormal_index=False, hidden=512, heads=4,
                 mlp_dim=512, cls_hidden=128):
        """The reference's sizes by default; tests narrow hidden/heads/mlp_dim/cls_hidden to run fast."""
        super().__init__()
        self.anchor_at_abnormal_index = anchor_at_abnormal_index
        self.embedding = Temporal(input_size, hidden)
        self.selfatt = Transformer(hidden, 2, heads, hidden // heads, mlp_dim, dropout=0.5)
        self.cls_head = ADCLS(2 * hidden, cls_hidden)
        self.Amemory = MemoryUnit(a_nums, hidden)
        self.Nmemory = MemoryUnit(n_nums, hidden)
        self.encoder_mu = nn.Sequential(nn.Linear(hidden, hidden))
        self.encoder_var = nn.Sequential(nn.Linear(hidden, hidden))
        self.triplet = nn.TripletMarginLoss(margin=1)

    def forward(self, x, noise=None):
        if x.dim() == 4:
            b, n, t, d = x.shape
            x = x.reshape(b * n, t, d)
        else:
            (b, t, d), n = x.shape, 1
        x = self.selfatt(self.embedding(x))
        if not self.training:
            _, a_aug = self.Amemory(x)
            _, n_aug = self.Nmemory(x)
            x = torch.cat([x, self.encoder_mu(a_aug) + self.encoder_mu(n_aug)], dim=-1)
            return {"frame": self.cls_head(x).reshape(b, n, -1).mean(1)}

        def per_video(v):
            return v.reshape(b // 2, n, -1).mean(1)

        k = t // 16 + 1
        n_x, a_x = x[:b * n // 2], x[b * n // 2:]
        a_att, a_aug = self.Amemory(a_x)
        n_a_att, n_a_aug = self.Nmemory(a_x)
        a_n_att, a_n_aug = self.Amemory(n_x)
        n_att, n_aug = self.Nmemory(n_x)
        a_index = torch.topk(a_att, k, dim=-1)[1]
        n_index = torch.topk(n_att, k, dim=-1)[1]
        p_index = torch.topk(n_a_att, k, dim=-1)[1]
        negative = per_video(_gather_mean(a_x, a_index))
        anchor = per_video(_gather_mean(n_x, n_index))
        positive = per_video(_gather_mean(a_x, p_index))
        normalize = nn.functional.normalize
        triplet = self.triplet(normalize(anchor, dim=-1), normalize(positive, dim=-1), normalize(negative, dim=-1))
        mu, logvar = self.encoder_mu(n_aug), self.encoder_var(n_aug)
        eps = torch.randn_like(mu) if noise is None else noise
        n_aug_new = mu + eps * logvar.exp().sqrt()
        anchor_new = per_video(_gather_mean(n_aug_new, a_index if self.anchor_at_abnormal_index else n_index))
        a_aug_new = self.encoder_mu(a_aug)
        negative_new = per_video(_gather_mean(a_aug_new, a_index))
        kl = torch.mean(-0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1))
        a_n_aug = self.encoder_mu(a_n_aug)
        n_a_aug = self.encoder_mu(n_a_aug)
        distance = torch.relu(100 - torch.norm(negative_new, p=2, dim=-1) + torch.norm(anchor_new, p=2, dim=-1)).mean()
        x = torch.cat([x, torch.cat([n_aug_new + a_n_aug, a_aug_new + n_a_aug], dim=0)], dim=-1)
        return {"frame": self.cls_head(x).reshape(b, n, -1).mean(1), "triplet_margin": triplet, "kl_loss": kl,
                "distance": distance, "A_att": per_video(a_att), "N_att": per_video(n_att),
                "A_Natt": per_video(a_n_att), "N_Aatt": per_video(n_a_att)}


def ad_loss(result, label):
    """The reference's training loss on the training forward's outputs."""
    bce = nn.BCELoss()
    att = result["frame"]
    half, t = label.size(0) // 2, att.size(1)
    k = t // 16 + 1
    ones = torch.ones(half)
    anomaly = bce(torch.topk(att, k, dim=-1)[0].mean(-1), label)
    panomaly = bce(torch.topk(1 - result["N_Aatt"], k, dim=-1)[0].mean(-1), ones)
    a_loss = bce(torch.topk(result["A_att"], k, dim=-1)[0].mean(-1), ones)
    n_loss = bce(result["N_att"], torch.ones_like(result["N_att"]))
    a_nloss = bce(result["A_Natt"], torch.zeros_like(result["A_Natt"]))
    return (anomaly + 0.1 * (a_loss + panomaly + n_loss + a_nloss) + 0.1 * result["triplet_margin"]
            + 0.001 * result["kl_loss"] + 0.0001 * result["distance"])

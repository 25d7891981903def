"""A PyTorch re-implementation of RTFM (tianyu0207/RTFM: model.py, train.py), written for the tests
from the official code's description, in its own layout (channels-first Conv1d/BatchNorm1d, a
loop over crops with torch.gather, the trainer's flat score view).

Module names reproduce the official state_dict keys. Dropout takes explicit keep masks (dict
name -> bool tensor) so a test can give the JAX port the same draws; without masks it is off.
GV-VAD's variant widens the branches to D/4 (the official RTFM hard-codes 512 for D = 2048).
"""
import torch
from torch import nn

P_DROP = 0.7


def drop(x, masks, name):
    """Inverted dropout with a given keep mask (p = 0.7); identity without one."""
    if masks is None or name not in masks:
        return x
    return x * masks[name].to(x.dtype) / (1 - P_DROP)


class NonLocalBlock1D(nn.Module):
    """Dot-product non-local block: f = theta(x)^T phi(x) / N, y = f g(x), z = W(y) + x."""

    def __init__(self, channels):
        super().__init__()
        inter = max(channels // 2, 1)
        self.inter = inter
        self.g = nn.Conv1d(channels, inter, 1)
        self.theta = nn.Conv1d(channels, inter, 1)
        self.phi = nn.Conv1d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv1d(inter, channels, 1), nn.BatchNorm1d(channels))
        nn.init.constant_(self.W[1].weight, 0)
        nn.init.constant_(self.W[1].bias, 0)

    def forward(self, x):  # x: (N, C, T)
        n = x.size(0)
        g_x = self.g(x).view(n, self.inter, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(n, self.inter, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(n, self.inter, -1)
        f = torch.matmul(theta_x, phi_x)
        f = f / f.size(-1)
        y = torch.matmul(f, g_x).permute(0, 2, 1).contiguous().view(n, self.inter, *x.size()[2:])
        return self.W(y) + x


class Aggregate(nn.Module):
    """The multi-scale temporal network: PDC branches (dilation 1, 2, 4), conv_4 + non-local, conv_5."""

    def __init__(self, len_feature):
        super().__init__()
        quarter = len_feature // 4

        def pdc(dilation):
            return nn.Sequential(nn.Conv1d(len_feature, quarter, 3, stride=1, dilation=dilation, padding=dilation),
                                 nn.ReLU(), nn.BatchNorm1d(quarter))

        self.conv_1, self.conv_2, self.conv_3 = pdc(1), pdc(2), pdc(4)
        self.conv_4 = nn.Sequential(nn.Conv1d(len_feature, quarter, 1, bias=False), nn.ReLU())
        self.conv_5 = nn.Sequential(nn.Conv1d(len_feature, len_feature, 3, padding=1, bias=False), nn.ReLU(),
                                    nn.BatchNorm1d(len_feature))
        self.non_local = NonLocalBlock1D(quarter)

    def forward(self, x):  # x: (N, T, F)
        out = x.permute(0, 2, 1)
        residual = out
        out_d = torch.cat((self.conv_1(out), self.conv_2(out), self.conv_3(out)), dim=1)
        out = self.non_local(self.conv_4(out))
        out = self.conv_5(torch.cat((out_d, out), dim=1)) + residual
        return out.permute(0, 2, 1)


def init_like_official(module):
    """xavier_uniform on every Conv/Linear weight, zero biases (the code's weight_init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                m.bias.data.fill_(0)


def select_top_magnitude(features, scores, magnitudes, keep, k, ncrops):
    """Top-k by (dropped-out) magnitude: per-video mean score and per-crop selected features.

    features (n*ncrops, T, F), scores (n, T, 1), magnitudes (n, T). Returns score (n, 1) and the
    selected features (ncrops*n, k, F), crops outer, as the official loop builds them.
    """
    n, t = magnitudes.shape
    dropped = magnitudes if keep is None else magnitudes * keep.to(magnitudes.dtype) / (1 - P_DROP)
    idx = torch.topk(dropped, k, dim=1)[1]
    idx_feat = idx.unsqueeze(2).expand([-1, -1, features.shape[2]])
    per_crop = features.view(n, ncrops, t, -1).permute(1, 0, 2, 3)
    selected = torch.cat([torch.gather(crop, 1, idx_feat) for crop in per_crop])
    score = torch.mean(torch.gather(scores, 1, idx.unsqueeze(2).expand([-1, -1, scores.shape[2]])), dim=1)
    return score, selected


class RTFM(nn.Module):
    """RTFM's Model: Aggregate -> dropout -> fc1 -> fc2 -> fc3 (sigmoid); crops averaged."""

    def __init__(self, n_features, batch_size, hidden=(512, 128), k=3):
        super().__init__()
        self.batch_size, self.k = batch_size, k
        self.Aggregate = Aggregate(n_features)
        self.fc1 = nn.Linear(n_features, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], 1)
        init_like_official(self)

    def head(self, features, masks):
        s = drop(torch.relu(self.fc1(features)), masks, "fc1")
        s = drop(torch.relu(self.fc2(s)), masks, "fc2")
        return torch.sigmoid(self.fc3(s))

    def forward(self, inputs, masks=None):
        bs, ncrops, t, f = inputs.size()
        features = drop(self.Aggregate(inputs.view(-1, t, f)), masks, "features")
        return self.select(features, bs, ncrops, masks)

    def select(self, features, bs, ncrops, masks):
        scores = self.head(features, masks).view(bs, ncrops, -1).mean(1).unsqueeze(2)
        magnitudes = torch.norm(features, p=2, dim=2).view(bs, ncrops, -1).mean(1)
        b = self.batch_size
        get = (lambda name: None) if masks is None else masks.get
        score_abnormal, feat_abnormal = select_top_magnitude(features[b * ncrops:], scores[b:], magnitudes[b:],
                                                             get("select_abnormal"), self.k, ncrops)
        score_normal, feat_normal = select_top_magnitude(features[:b * ncrops], scores[:b], magnitudes[:b],
                                                         get("select_normal"), self.k, ncrops)
        return {"score_abnormal": score_abnormal, "score_normal": score_normal, "feat_select_abn": feat_abnormal,
                "feat_select_normal": feat_normal, "scores": scores, "features": features}


def sparsity(arr, lamda2):
    return lamda2 * torch.mean(torch.norm(arr, dim=0))


def smooth(arr, lamda1):
    shifted = torch.zeros_like(arr)
    shifted[:-1] = arr[1:]
    shifted[-1] = arr[-1]
    return lamda1 * torch.sum((shifted - arr) ** 2)


def rtfm_cost(out, nlabel, alabel, batch_size, *, alpha=1e-4, margin=100.0, regularisers=True):
    """RTFM_loss (+ smooth + sparsity), with the trainer's `scores.view(batch_size * 32 * 2, -1)`."""
    score = torch.cat((out["score_normal"], out["score_abnormal"]), 0).squeeze()
    loss_cls = nn.BCELoss()(score, torch.cat((nlabel, alabel), 0))
    loss_abn = torch.abs(margin - torch.norm(torch.mean(out["feat_select_abn"], dim=1), p=2, dim=1))
    loss_nor = torch.norm(torch.mean(out["feat_select_normal"], dim=1), p=2, dim=1)
    cost = loss_cls + alpha * torch.mean((loss_abn + loss_nor) ** 2)
    parts = {"bce": loss_cls, "magnitude": torch.mean((loss_abn + loss_nor) ** 2)}
    if regularisers:
        scores = out["scores"].view(batch_size * 32 * 2, -1).squeeze()
        abn_scores = scores[batch_size * 32:]
        parts["sparsity"] = sparsity(abn_scores, 8e-3)
        parts["smoothness"] = smooth(abn_scores, 8e-4)
        cost = cost + parts["smoothness"] + parts["sparsity"]
    return cost, parts


def official_ssls(cost, abnormal_sources, vlr, warmup=1.0):
    """train_tcc_difLR.py: cost * mean(sources == 0) + cost * mean(sources == 1) * VLR * warm-up."""
    a_mask, b_mask = abnormal_sources == 0, abnormal_sources == 1
    return cost * a_mask.float().mean() + cost * b_mask.float().mean() * vlr * warmup

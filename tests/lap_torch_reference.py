"""A PyTorch re-implementation of GV-VAD's LAP (Sumutan/GV-VAD: model_tcc_triplet_v2_oral.py,
train_tcc_difLR.py), written for the tests from the official code's description.

As the code: the captions arrive tiled over the crops, (B, crops, T, E), and run through their
own Aggregate per tiled row; the pseudo-anomaly labels come from crop 4 of the abnormal
videos' captions; the triplet flattens (crops, n, T, F) features to (n*T, crops*F) rows.
Module names reproduce the official state_dict keys; dropout takes explicit keep masks.
"""
import torch
import torch.nn.functional as F
from torch import nn

from rtfm_torch_reference import Aggregate, RTFM, drop, init_like_official, rtfm_cost


def suspected_anomalies(bank, text):
    """calculate_abn: max cosine similarity to the prompts, thresholded at mean + std."""
    capacity = bank.shape[0]
    similarity = F.cosine_similarity(text.unsqueeze(2).repeat(1, 1, capacity, 1), bank.unsqueeze(0), dim=-1)
    similarity = torch.max(similarity, dim=-1)[0]
    std, mean = torch.std_mean(similarity)
    c = torch.where(similarity > mean + std, torch.ones_like(similarity), torch.zeros_like(similarity))
    return c.unsqueeze(-1)


def triplet_features(normal_feature, normal_score, abnormal_feature, abnormal_score, capacity, abn_index):
    """calculate_triplet: features (crops, n, T, F), scores (n, T, 1) -> (capacity, 1, crops*F) triples."""
    _, n, t, _ = abnormal_feature.size()
    normal_rows = normal_feature.permute(1, 2, 0, 3).reshape(n * t, -1)
    abnormal_rows = abnormal_feature.permute(1, 2, 0, 3).reshape(n * t, -1)
    anchor = torch.topk(normal_score.view(-1, 1), capacity, dim=0, largest=False)[1]
    positive = torch.topk(abnormal_score.view(-1, 1), capacity, dim=0, largest=False)[1]
    negative = torch.topk((abnormal_score * abn_index).view(-1, 1), capacity, dim=0, largest=True)[1]
    return normal_rows[anchor], abnormal_rows[positive], abnormal_rows[negative]


class LAP(RTFM):
    """Model (feature_group both, fusion concat): visual and caption Aggregates, concatenated."""

    def __init__(self, feature_size, emb_dim, batch_size, abn_bank, hidden=(512, 128), k=3, gama=0.1,
                 aggregate_text=True):
        super().__init__(feature_size, batch_size, hidden, k)
        self.Aggregate_text = Aggregate(emb_dim)
        self.fc1 = nn.Linear(feature_size + emb_dim, hidden[0])
        self.aggregate_text, self.gama = aggregate_text, gama
        self.abn_bank = abn_bank  # a plain tensor, as the code: not in the state_dict
        self.triplet = nn.TripletMarginLoss(margin=1, reduction="mean")
        init_like_official(self)

    def forward(self, inputs, text, masks=None):
        b = self.batch_size
        abn_index = suspected_anomalies(self.abn_bank, text[b:, 4])
        bs, ncrops, t, f = inputs.size()
        out = drop(self.Aggregate(inputs.view(-1, t, f)), masks, "features")
        out2 = text.view(-1, t, text.shape[-1])
        if self.aggregate_text:
            out2 = drop(self.Aggregate_text(out2), masks, "text")
        features = torch.cat([out, out2], dim=2)
        result = self.select(features, bs, ncrops, masks)
        scores = result["scores"]
        result["abn_index"] = abn_index
        result["pal"] = nn.BCELoss()(1 - scores[b:], abn_index)
        anchor, positive, negative = triplet_features(
            features[:b * ncrops].view(b, ncrops, t, -1).permute(1, 0, 2, 3), scores[:b],
            features[b * ncrops:].view(b, ncrops, t, -1).permute(1, 0, 2, 3), scores[b:],
            self.abn_bank.shape[0], abn_index)
        result["triplet"] = self.gama * self.triplet(anchor, positive, negative)  # gamma, the first time
        return result


def lap_cost(out, nlabel, alabel, batch_size, *, beta=1e-3, gama=0.1):
    """train_tcc_difLR.py with --extra_loss: RTFM cost + smooth + sparsity + beta * LAT + gama * triplet."""
    cost, parts = rtfm_cost(out, nlabel, alabel, batch_size)
    return cost + beta * out["pal"] + gama * out["triplet"], parts

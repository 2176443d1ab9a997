"""Tests for the shared transformer building blocks in ``lensblur_models.nn``."""

import math

import pytest
import torch

from lensblur import LensBlurError
from lensblur_models.nn import (PatchEmbed, ScalarEmbedder, TimestepEmbedder, TokenTransformer,
                                TransformerBlock, fourier_features, patchify,
                                sincos_pos_embed_2d, unpatchify)


class TestPatches:
    def test_patch_embed_shape_and_order(self):
        torch.manual_seed(0)
        embed = PatchEmbed(3, 8, 2)
        x = torch.randn(2, 3, 4, 6)
        tokens, (gh, gw) = embed(x)
        assert tokens.shape == (2, 6, 8) and (gh, gw) == (2, 3)
        # token k (row-major) is the projection of patch (k // gw, k % gw)
        patch = x[:, :, 2:4, 4:6]  # patch row 1, col 2 -> token 5
        expected = (embed.proj.weight * patch[:, None]).sum((2, 3, 4)) + embed.proj.bias
        torch.testing.assert_close(tokens[:, 5], expected)

    def test_unpatchify_inverts_patchify(self):
        x = torch.randn(2, 5, 6, 10)
        tok = patchify(x, 2)
        assert tok.shape == (2, 15, 20)
        assert torch.equal(unpatchify(tok, 2, 5, 3, 5), x)
        # a single token fills exactly its patch
        t = torch.zeros(1, 15, 20)
        t[0, 7] = 1.0  # row 1, col 2
        img = unpatchify(t, 2, 5, 3, 5)
        assert img[..., 2:4, 4:6].eq(1).all() and img.sum() == 20

    def test_bad_input(self):
        with pytest.raises(LensBlurError, match="patch"):
            PatchEmbed(3, 8, 4)(torch.zeros(1, 3, 6, 8))
        with pytest.raises(LensBlurError, match="x"):
            PatchEmbed(3, 8, 2)(torch.zeros(1, 1, 4, 4))
        with pytest.raises(LensBlurError, match="tokens"):
            unpatchify(torch.zeros(1, 5, 4), 2, 1, 2, 3)
        with pytest.raises(TypeError, match="patch"):
            PatchEmbed(3, 8, 2.0)


class TestEmbeddings:
    def test_sincos_values(self):
        emb = sincos_pos_embed_2d(3, 4, 8)
        assert emb.shape == (12, 8)
        # token (r=2, c=1) -> index 9; row part: [sin(2*w), cos(2*w)], w = [1, 1/100]
        w = torch.tensor([1.0, 0.01])
        row = torch.cat([torch.sin(2 * w), torch.cos(2 * w)])
        col = torch.cat([torch.sin(1 * w), torch.cos(1 * w)])
        torch.testing.assert_close(emb[9], torch.cat([row, col]))
        # distinct positions get distinct embeddings
        assert torch.cdist(emb, emb).add(torch.eye(12)).min() > 1e-3
        with pytest.raises(LensBlurError, match="dim"):
            sincos_pos_embed_2d(2, 2, 6)

    def test_fourier_features(self):
        x = torch.tensor([[0.5, -0.25]])
        ff = fourier_features(x, num_freqs=3, max_freq=4.0)
        assert ff.shape == (1, 12)
        freqs = torch.tensor([1.0, 2.0, 4.0])
        first = torch.cat([torch.sin(math.pi * 0.5 * freqs), torch.cos(math.pi * 0.5 * freqs)])
        torch.testing.assert_close(ff[0, :6], first)
        with pytest.raises(TypeError, match="x"):
            fourier_features(torch.zeros(2, 2, dtype=torch.long), 3)

    def test_scalar_and_timestep_embedders_separate_inputs(self):
        torch.manual_seed(0)
        se = ScalarEmbedder(3, 16)
        out = se(torch.tensor([[0.1, 0.2, 0.3], [0.1, 0.2, 0.35]]))
        assert out.shape == (2, 16) and (out[0] - out[1]).abs().max() > 1e-4
        with pytest.raises(LensBlurError, match="x"):
            se(torch.zeros(2, 2))
        te = TimestepEmbedder(16)
        out = te(torch.tensor([0.2, 0.21]))
        assert out.shape == (2, 16) and (out[0] - out[1]).abs().max() > 1e-4
        with pytest.raises(LensBlurError, match="t"):
            te(torch.zeros(2, 1))


class TestTransformer:
    def test_adaln_zero_identity_at_init(self):
        torch.manual_seed(0)
        blk = TransformerBlock(16, heads=4)
        x = torch.randn(2, 5, 16)
        assert torch.equal(blk(x, torch.randn(2, 16)), x)

    def test_conditioning_and_permutation_equivariance(self):
        torch.manual_seed(0)
        net = TokenTransformer(16, depth=2, heads=4)
        for p in net.parameters():  # leave adaLN-zero so the condition matters
            torch.nn.init.normal_(p, std=0.2)
        x, c = torch.randn(2, 6, 16), torch.randn(2, 16)
        y = net(x, c)
        assert y.shape == (2, 6, 16)
        # no position information inside: permuting tokens permutes the output
        perm = torch.randperm(6)
        torch.testing.assert_close(net(x[:, perm], c), y[:, perm], atol=1e-5, rtol=1e-5)
        # attention mixes tokens: changing one token changes the others
        x2 = x.clone()
        x2[:, 0] += torch.randn(16)  # not a constant shift, which LayerNorm would remove
        assert (net(x2, c)[:, 1:] - y[:, 1:]).abs().max() > 1e-4
        assert (net(x, c + 1.0) - y).abs().max() > 1e-4
        y.sum().backward()
        assert all(p.grad is not None for p in net.parameters())

    def test_bad_input(self):
        with pytest.raises(LensBlurError, match="heads"):
            TransformerBlock(10, heads=3)
        net = TokenTransformer(8, depth=1, heads=2)
        with pytest.raises(LensBlurError, match="cond"):
            net(torch.zeros(1, 3, 8), torch.zeros(2, 8))


class TestGradientCheckpointing:
    def test_same_gradients(self):
        torch.manual_seed(0)
        net = TokenTransformer(8, depth=2, heads=2)
        for p in net.parameters():
            torch.nn.init.normal_(p, std=0.2)
        x, c = torch.randn(2, 5, 8), torch.randn(2, 8)

        def grads():
            net.zero_grad()
            saved = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
                loss = net(x, c).square().sum()
            loss.backward()
            return [p.grad.clone() for p in net.parameters()], len(saved)

        plain, n_plain = grads()
        net.gradient_checkpointing = True
        ckpt, n_ckpt = grads()
        assert n_ckpt < n_plain / 2  # the blocks' activations were not kept
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain, ckpt))
        assert sum(float(g.abs().sum()) for g in plain) > 0

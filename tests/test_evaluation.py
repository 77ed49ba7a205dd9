"""Evaluation: the Fréchet distance against closed forms, feature extractors, caption alignment, the report."""

import math

import pytest
import torch

from eidos.evaluation import FeatureStatistics, frechet_distance
from eidos.evaluation.alignment import caption_alignment
from eidos.evaluation.features import PixelFeatures, load_feature_extractor
from eidos.evaluation.report import CaptionedImages, evaluate


def stats(mean, covariance):
    return FeatureStatistics(torch.as_tensor(mean, dtype=torch.float64),
                             torch.as_tensor(covariance, dtype=torch.float64), count=0)


def test_commuting_covariances_match_the_closed_form():
    # diagonal covariances commute: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    a = stats([0.0, 1.0, 2.0], torch.diag(torch.tensor([1.0, 4.0, 9.0])))
    b = stats([1.0, 1.0, 0.0], torch.diag(torch.tensor([4.0, 1.0, 1.0])))
    expected = (1 + 0 + 4) + ((1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, abs=1e-9)


def test_non_commuting_covariances_match_the_two_by_two_closed_form():
    # for 2x2 SPD matrices, Tr((S1 S2)^(1/2)) = sqrt(Tr(S1 S2) + 2 sqrt(det(S1 S2)))
    s1 = torch.tensor([[2.0, 0.7], [0.7, 1.0]], dtype=torch.float64)
    s2 = torch.tensor([[1.0, -0.4], [-0.4, 3.0]], dtype=torch.float64)
    product = s1 @ s2
    cross = math.sqrt(product.trace().item() + 2 * math.sqrt(torch.linalg.det(product).item()))
    expected = 0.25 + (s1.trace() + s2.trace()).item() - 2 * cross
    d = frechet_distance(stats([0.5, 0.0], s1), stats([0.0, 0.0], s2))
    assert d == pytest.approx(expected, abs=1e-9)
    assert frechet_distance(stats([0.5, 0.0], s1), stats([0.5, 0.0], s1)) == pytest.approx(0.0, abs=1e-9)
    assert d == pytest.approx(frechet_distance(stats([0.0, 0.0], s2), stats([0.5, 0.0], s1)), abs=1e-9)


def test_statistics_of_samples_recover_the_gaussians():
    generator = torch.Generator().manual_seed(0)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.2, -0.3, 0.8]], dtype=torch.float64)
    samples = torch.randn(200_000, 3, generator=generator, dtype=torch.float64) @ root.T + 2.0
    measured = FeatureStatistics.of(samples)
    assert torch.allclose(measured.mean, torch.full((3,), 2.0, dtype=torch.float64), atol=0.01)
    assert torch.allclose(measured.covariance, root @ root.T, atol=0.02)
    assert frechet_distance(measured, stats([2.0] * 3, root @ root.T)) < 1e-3


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N >= 2, D\)"):
        FeatureStatistics.of(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(stats([0.0], [[1.0]]), stats([0.0, 0.0], torch.eye(2)))



def blobs(count: int, seed: int, size: int = 16) -> torch.Tensor:
    """Images of one coloured square each, at a random place: distinct, smooth, easy to tell apart."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.ones(count, 3, size, size)
    for image in images:
        y, x = torch.randint(0, size - 6, (2,), generator=generator).tolist()
        image[:, y:y + 6, x:x + 6] = torch.rand(3, 1, 1, generator=generator)
    return images


def test_pixel_features_see_layout_colour_and_grain():
    features = PixelFeatures(grid=4, bins=4)
    images = blobs(3, seed=0)
    out = features(images)
    assert out.shape == (3, features.dim) == (3, 3 * 16 + 64 + 6)
    histogram = out[:, 48:112]
    assert torch.allclose(histogram.sum(dim=1), torch.ones(3))
    assert torch.equal(features(images), out)  # no randomness, no weights
    white = features(torch.ones(1, 3, 16, 16))
    assert torch.allclose(white[0, :48], torch.ones(48)) and white[0, 48 + 63] == 1  # all in the top bin
    assert torch.all(white[0, -6:] == 0)  # a flat image has no edges
    grainy = (images + 0.1 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert torch.all(features(grainy)[:, -6:] > out[:, -6:])  # grain raises the edge energy at both scales


def test_caption_alignment_counts_ranks_exactly():
    # 3 prompts with orthogonal text; 3 reference images whose captions are those prompts
    prompt_text = torch.eye(3)
    reference_features = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    reference_text = torch.eye(3)
    # query 0 lands next to reference 0 (its own prompt), query 1 next to reference 2 (wrong), query 2 exact
    features = torch.tensor([[0.5, 0.5], [1.0, 9.0], [0.0, 9.5]])
    hits = caption_alignment(features, torch.tensor([0, 1, 2]), prompt_text, reference_features, reference_text,
                             ks=(1, 2, 3))
    assert hits == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: pytest.approx(1.0)}


def captioned(images: torch.Tensor, seed: int) -> CaptionedImages:
    text = torch.randn(len(images), 8, generator=torch.Generator().manual_seed(seed))
    return CaptionedImages(images, [f"caption {seed}-{i}" for i in range(len(images))], text)


def test_a_perfect_generator_scores_the_real_images_and_a_constant_one_scores_chance():
    prompts, reference = captioned(blobs(20, seed=1), 1), captioned(blobs(60, seed=2), 2)
    # the prompts' captions are the references' for the first 20: then a real image borrows a related caption
    reference.text[:20] = prompts.text + 0.1 * torch.randn(20, 8, generator=torch.Generator().manual_seed(3))
    reference.images[:20] = prompts.images + 0.02
    constant = prompts.images[:1].expand(20, -1, -1, -1)
    rows = evaluate({"perfect": lambda: prompts.images.clone(), "constant": lambda: constant.clone()},
                    prompts, reference, PixelFeatures(grid=4))
    real, perfect, const, chance = rows
    assert [r["images"] for r in rows] == ["real held-out", "perfect", "constant", "chance"]
    assert perfect["frechet"] == pytest.approx(real["frechet"]) and perfect["top-1"] == real["top-1"]
    assert real["top-1"] > 0.9  # every real image finds its own caption's neighbour
    assert const["top-1"] == pytest.approx(1 / 20) and const["top-5"] == pytest.approx(5 / 20)  # one borrowed caption
    assert const["frechet"] > 5 * real["frechet"]
    assert chance == {"images": "chance", "top-1": 1 / 20, "top-5": 5 / 20}
    assert perfect["images/s"] > 0
    with pytest.raises(ValueError, match="made 19 images for 20 prompts"):
        evaluate({"short": lambda: prompts.images[:19]}, prompts, reference, PixelFeatures())

    # two rounds (perfect, then constant): each scored as one round is, the row their mean and spread
    both = evaluate({"two rounds": lambda: torch.cat([prompts.images, constant])}, prompts, reference,
                    PixelFeatures(grid=4))[1]
    for key in ("frechet", "top-1", "top-5"):
        assert both[key] == pytest.approx((perfect[key] + const[key]) / 2)
        assert both[f"{key} std"] == pytest.approx(abs(perfect[key] - const[key]) / 2 ** 0.5)
    assert both["rounds"] == 2 and "rounds" not in perfect and "frechet std" not in perfect


def plugin_features(device):
    """A user's own extractor, named on the command line as tests.test_evaluation:plugin_features."""
    return lambda images: images.mean(dim=(2, 3))


def test_feature_extractors_by_name():
    assert isinstance(load_feature_extractor("pixels"), PixelFeatures)
    extractor = load_feature_extractor("tests.test_evaluation:plugin_features")
    assert extractor(torch.ones(2, 3, 4, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown feature extractor 'clip'"):
        load_feature_extractor("clip")
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install torch-fidelity"):
            load_feature_extractor("inception")


def test_identical_captions_count_as_one_prompt():
    # 4 images for 3 distinct captions ("b" twice); perfect images must hit at 1, and chance is k / 3
    images = blobs(4, seed=7)
    prompts = CaptionedImages(images, ["a", "b", "c", "b"], torch.eye(4)[[0, 1, 2, 1]])
    reference = CaptionedImages(images + 0.01, ["a", "b", "c", "b"], torch.eye(4)[[0, 1, 2, 1]])
    real, chance = evaluate({}, prompts, reference, PixelFeatures(grid=4))
    assert real["top-1"] == 1.0 and chance["top-1"] == pytest.approx(1 / 3)
    as_bytes = CaptionedImages((images * 255).round().to(torch.uint8), prompts.captions, prompts.text)
    assert evaluate({}, as_bytes, reference, PixelFeatures(grid=4))[0]["frechet"] == pytest.approx(
        real["frechet"], abs=1e-4)  # uint8 images are read as the same images (up to 1/255 rounding)

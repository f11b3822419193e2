"""Synthetic calibrated probability fields and truths drawn from them with correlated errors."""

import numpy as np
from scipy import ndimage, special

SIZE = 192


def exponential_field(rng, size, length):
    """Zero-mean unit-variance Gaussian field with correlation exp(-h / length) (periodic)."""
    offsets = np.minimum(np.arange(size), size - np.arange(size))
    covariance = np.exp(-np.hypot(offsets[:, None], offsets[None, :]) / length)
    spectrum = np.clip(np.fft.rfft2(covariance).real, 0.0, None)
    noise = np.fft.rfft2(rng.standard_normal((size, size)))
    return np.fft.irfft2(np.sqrt(spectrum) * noise, s=(size, size))


def gaussian_field(rng, size, sigma):
    """Zero-mean unit-variance field with correlation exp(-h^2 / (4 sigma^2)) (periodic)."""
    smooth = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return smooth * np.sqrt(4.0 * np.pi) * sigma


def landscape(rng):
    """Glacier shapes (a smooth random field) and ambiguous patches (debris, late snow)."""
    shapes = gaussian_field(rng, SIZE, 12.0) / (np.sqrt(4.0 * np.pi) * 12.0)
    return shapes / shapes.std(), gaussian_field(rng, SIZE, 6.0) > 1.0


def probability(shapes, ambiguous, threshold=0.6):
    """Glaciers where ``shapes > threshold``, edges softened over a few pixels; ambiguous
    patches pulled into [0.3, 0.7]."""
    glacier = shapes > threshold
    inside = ndimage.distance_transform_edt(glacier) - 0.5
    outside = ndimage.distance_transform_edt(~glacier) - 0.5
    p = special.expit(np.where(glacier, inside, -outside) / 1.5)
    return np.where(ambiguous, np.clip(p, 0.3, 0.7), p)


def draw_truth(rng, p):
    """Threshold ``p`` at a correlated uniform level Phi(Z), Z a Gaussian field with a 1/e
    correlation range of 6 px: every pixel is glacier with probability p."""
    return special.ndtr(gaussian_field(rng, SIZE, 3.0)) < p


def synthetic_scene(rng):
    """Calibrated probabilities and a truth drawn from them with correlated errors."""
    p = probability(*landscape(rng))
    return p, draw_truth(rng, p)

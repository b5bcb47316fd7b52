"""The tiny OneNIP used across tests: trains in seconds on 64 px images, same code paths as the real one."""

TINY_MODEL: dict = {
    "backbone": {"input_size": 64},
    "embed_dim": 16,
    "num_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "neighbor_size": 3,
    "refiner_dim": 8,
    "memory_patches": 32,  # a few images' 64 patches each: the bank is sampled and k-center greedy chooses
    "scoring": {"smoothing_sigma": 1.0, "score_pool_size": 4},
}
# Validation choices on a tiny model: few candidates, so a test run stays fast.
TINY_VALIDATION: dict = {"smoothing_sigmas": [0, 2], "score_pool_sizes": [1, 4], "weight_step": 0.5, "anomalies_per_image": 1, "every_epochs": 1}

"""The tiny OneNIP used across tests: trains in seconds on 64 px images, same code paths as the real one."""

TINY_MODEL: dict = {
    "backbone": {"input_size": 64},
    "embed_dim": 16,
    "num_heads": 2,
    "num_encoder_layers": 1,
    "num_decoder_layers": 1,
    "neighbor_size": 3,
    "refiner_dim": 8,
    "smoothing_sigma": 1.0,
    "score_pool_size": 4,
}

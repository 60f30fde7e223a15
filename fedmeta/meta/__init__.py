"""Meta-learning algorithms on torch.func; no Flower, no devices."""

"""``sparse-edit locate``: safety-neuron statistics and the artifact that holds them."""

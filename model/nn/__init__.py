"""The fusion network and everything around it: device, loss, preprocessing (normaliser, PCA),
training samples, training, the model file and the predictor that applies a model to a window."""

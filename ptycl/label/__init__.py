"""Labels for scans: object images cut into the model's training targets."""

"""What changes the model: training and fine-tuning, structural pruning, int8 calibration, quantization and QAT."""

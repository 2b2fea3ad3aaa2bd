"""The classroom device's process: canvas, live prediction, corrections, personalisation."""

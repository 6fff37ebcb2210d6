"""Brain MRI tumor classifier: label set, preprocessing, architecture, data, training, evaluation, registry."""

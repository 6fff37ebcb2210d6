"""Where the images come from: listing inputs, pseudonymous paths, the brain-MRI selection rules."""

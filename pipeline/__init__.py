"""gft-pipeline driver side: losses, advantages, the Arrow batch, the embedded task, the CLI."""

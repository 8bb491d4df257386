"""Workers: the job runner, the process entry point and the pool ``graft serve`` embeds."""

"""Using a trained model: downstream evaluation on HEAR-layout tasks, and the tasks' converters."""

"""What training needs beside its loop: checkpoints and resume state, schedules, callbacks, several processes."""

//! An observer that keeps the logits each token was sampled from, `[row][step][vocab]`.

use llamagen_runtime::Observer;

#[derive(Default)]
pub struct LogitsRecorder(pub Vec<Vec<Vec<f32>>>);

impl Observer for LogitsRecorder {
    fn on_logits(&mut self, step: usize, row: usize, logits: &[f32]) {
        if self.0.len() <= row {
            self.0.resize(row + 1, Vec::new());
        }
        assert_eq!(self.0[row].len(), step, "steps arrive in order");
        self.0[row].push(logits.to_vec());
    }
}

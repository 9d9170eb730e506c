//! Prompt playback: a queue of 8 kHz PCM prompts cut into 20 ms frames, one frame per
//! `poll_frame` at the pace the caller of this module sets (the call asks every 20 ms).

use std::collections::VecDeque;
use std::sync::Arc;

use super::rtp::FRAME_SAMPLES;

/// One prompt's audio: 8 kHz mono linear PCM, shared between calls.
pub type PromptAudio = Arc<[i16]>;

#[derive(Debug, Default)]
pub struct Player {
    queue: VecDeque<PromptAudio>,
    position: usize,
}

impl Player {
    pub fn enqueue(&mut self, audio: PromptAudio) {
        self.queue.push_back(audio);
    }

    /// Stops the current prompt and drops queued ones (a keypress interrupts prompts).
    pub fn stop(&mut self) {
        self.queue.clear();
        self.position = 0;
    }

    pub fn is_playing(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Fills `frame` with the next 20 ms (zero-padded at a prompt's end); false when idle.
    pub fn next_frame(&mut self, frame: &mut [i16; FRAME_SAMPLES]) -> bool {
        let Some(current) = self.queue.front() else { return false };
        let end = (self.position + FRAME_SAMPLES).min(current.len());
        let n = end - self.position;
        frame[..n].copy_from_slice(&current[self.position..end]);
        frame[n..].fill(0);
        self.position = end;
        if self.position >= current.len() {
            self.queue.pop_front();
            self.position = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_queued_prompts_in_frames_and_stops_on_demand() {
        let mut p = Player::default();
        let a: PromptAudio = (0..400).map(|i| i as i16).collect::<Vec<_>>().into();
        p.enqueue(a.clone());
        p.enqueue(a);
        let mut f = [0i16; FRAME_SAMPLES];
        assert!(p.next_frame(&mut f));
        assert_eq!(f[0], 0);
        assert!(p.next_frame(&mut f));
        assert_eq!(f[0], 160);
        assert!(p.next_frame(&mut f)); // 80 samples left, zero padded
        assert_eq!((f[79], f[80]), (399, 0));
        assert!(p.next_frame(&mut f)); // second prompt
        assert_eq!(f[1], 1);
        p.stop();
        assert!(!p.is_playing());
        assert!(!p.next_frame(&mut f));
    }
}

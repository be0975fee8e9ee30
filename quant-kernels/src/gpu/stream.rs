//! Host-to-host launches of the element-wise kernels, streamed.
//!
//! A call's chunks go through two slots of buffers that the [`Gpu`] keeps
//! between calls: while the GPU copies in, runs and copies out chunk `k`,
//! the host writes chunk `k + 1` into the other slot's mapped upload
//! buffer, and reads chunk `k - 1`'s output out of its mapped read-back
//! buffer. Keeping the buffers matters as much as the overlap: a fresh
//! 128 MiB staging buffer per call costs the allocation and a page fault
//! per 4 KiB on first touch, which made the old one-shot path (one set of
//! buffers per chunk, through `Queue::write_buffer`) run at 1-3 GB/s.
//!
//! The bytes a kernel sees are the ones the one-shot path bound: the input
//! padded with zeros to whole words plus one spare word, bound at that
//! size (the kernels clamp reads to `arrayLength`), the output bound at its
//! size rounded up to a word, the status word set to `u32::MAX`.

use std::collections::VecDeque;
use std::sync::mpsc;

use rayon::prelude::*;
use wgpu::WriteOnly;

use super::{ErrorScope, Gpu, GpuError, Launch};

/// Chunks in flight at once.
const SLOTS: usize = 2;

/// Bytes of input or output per streamed chunk, at most: large enough that
/// a chunk's fixed costs (a submission, two mappings) are small against
/// its transfer, small enough that the host's copies overlap the GPU's work
/// for inputs of a few tens of MiB.
pub(crate) const STREAM_CHUNK: u64 = 16 << 20;

/// Copies above this size are split over rayon's threads.
const PAR_COPY: usize = 1 << 20;

type MapResult = Result<(), wgpu::BufferAsyncError>;

/// How long a finished submission's mapping callback may take to arrive
/// (from another thread's poll) before the chunk is reported lost.
const MAP_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// The buffers of one chunk in flight.
struct Slot {
    /// Input bytes the slot takes (data, padding and the spare word).
    cap_in: u64,
    /// Output bytes (a multiple of 4) the slot takes.
    cap_out: u64,
    /// MAP_WRITE | COPY_SRC, `cap_in + 4`: the input, then the status
    /// word's initial value. Mapped while the slot is idle.
    upload: wgpu::Buffer,
    input: wgpu::Buffer,
    output: wgpu::Buffer,
    status: wgpu::Buffer,
    /// MAP_READ | COPY_DST, `cap_out + 4`: the output, then the status word.
    readback: wgpu::Buffer,
}

/// The slots a [`Gpu`] keeps between calls (empty until the first).
#[derive(Default)]
pub(crate) struct Link {
    slots: Vec<Slot>,
}

/// A submitted chunk (in slot `chunk % slots`).
struct InFlight {
    chunk: usize,
    out_len: usize,
    submission: wgpu::SubmissionIndex,
    read: mpsc::Receiver<MapResult>,
    upload: mpsc::Receiver<MapResult>,
}

impl Gpu {
    /// Runs `launches` in order, the output of launch `i` (`out_lens[i]`
    /// bytes) handed to `sink(i, bytes)` in order. Returns the first launch
    /// whose kernel saw a NaN or infinity, with the chunk-relative index it
    /// reported; no launch after it is started.
    pub(crate) fn stream(
        &self,
        launches: &[Launch<'_>],
        out_lens: &[usize],
        mut sink: impl FnMut(usize, &[u8]),
    ) -> Result<Option<(usize, u32)>, GpuError> {
        assert_eq!(launches.len(), out_lens.len());
        if launches.is_empty() {
            return Ok(None);
        }
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        let need_in = launches
            .iter()
            .map(|l| l.input.len().next_multiple_of(4) as u64 + 4)
            .max()
            .unwrap_or(4);
        let need_out = out_lens
            .iter()
            .map(|&n| (n as u64).next_multiple_of(4).max(4))
            .max()
            .unwrap_or(4);
        let result = self.stream_on(&mut link, need_in, need_out, launches, out_lens, &mut sink);
        if result.is_err() {
            // Some slot may be mid-mapping: start afresh next time.
            link.slots.clear();
        }
        result
    }

    fn stream_on(
        &self,
        link: &mut Link,
        need_in: u64,
        need_out: u64,
        launches: &[Launch<'_>],
        out_lens: &[usize],
        sink: &mut impl FnMut(usize, &[u8]),
    ) -> Result<Option<(usize, u32)>, GpuError> {
        let slots = SLOTS.min(launches.len()).max(1);
        if link.slots.len() < slots
            || link.slots[..slots]
                .iter()
                .any(|s| s.cap_in < need_in || s.cap_out < need_out)
        {
            let (cap_in, cap_out) = link.slots.iter().fold((need_in, need_out), |(i, o), s| {
                (i.max(s.cap_in), o.max(s.cap_out))
            });
            link.slots.clear();
            for _ in 0..slots {
                link.slots.push(self.slot(cap_in, cap_out)?);
            }
        }
        let mut queue: VecDeque<InFlight> = VecDeque::new();
        let mut bad = None;
        for (k, l) in launches.iter().enumerate() {
            if queue.len() == slots {
                let f = queue.pop_front().expect("a chunk in flight");
                if let Some(i) = self.finish(&link.slots[f.chunk % slots], f, sink)? {
                    bad = Some(i);
                    break;
                }
            }
            queue.push_back(self.submit(&link.slots[k % slots], k, l, out_lens[k])?);
        }
        while let Some(f) = queue.pop_front() {
            let r = self.finish(&link.slots[f.chunk % slots], f, sink)?;
            bad = bad.or(r);
        }
        Ok(bad)
    }

    fn slot(&self, cap_in: u64, cap_out: u64) -> Result<Slot, GpuError> {
        let scope = ErrorScope::push(&self.device);
        let buffer = |label, size: u64, usage, mapped| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: mapped,
            })
        };
        use wgpu::BufferUsages as U;
        let slot = Slot {
            cap_in,
            cap_out,
            upload: buffer("upload", cap_in + 4, U::MAP_WRITE | U::COPY_SRC, true),
            input: buffer("input", cap_in, U::STORAGE | U::COPY_DST, false),
            output: buffer("output", cap_out, U::STORAGE | U::COPY_SRC, false),
            status: buffer("status", 4, U::STORAGE | U::COPY_DST | U::COPY_SRC, false),
            readback: buffer("readback", cap_out + 4, U::MAP_READ | U::COPY_DST, false),
        };
        scope.check(&format!(
            "allocating {} MiB of transfer buffers",
            (2 * cap_in + 2 * cap_out) >> 20
        ))?;
        Ok(slot)
    }

    fn submit(
        &self,
        slot: &Slot,
        chunk: usize,
        l: &Launch<'_>,
        out_len: usize,
    ) -> Result<InFlight, GpuError> {
        let op = format!("kernel {}::{}", l.module.name(), l.entry);
        let pipeline = self.pipeline(l.module, l.entry)?;
        let second = self.second_pipeline(l.module, l.entry)?;
        let scope = ErrorScope::push(&self.device);
        let len = l.input.len();
        let padded = len.next_multiple_of(4) as u64 + 4;
        let out_bytes = (out_len as u64).next_multiple_of(4).max(4);
        {
            let mut view = slot
                .upload
                .get_mapped_range_mut(0..padded + 4)
                .map_err(|e| runtime(&op, e.to_string()))?;
            let (data, rest) = view.slice(..).split_at(len);
            par_write(data, l.input);
            let (mut zeros, mut status) = rest.split_at(padded as usize - len);
            zeros.fill(0);
            status.copy_from_slice(&u32::MAX.to_le_bytes());
        }
        slot.upload.unmap();
        let params = self.uniform(&[l.n_units, l.extra[0], l.extra[1], l.extra[2]]);
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(l.entry),
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: sized(&slot.input, padded),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: sized(&slot.output, out_bytes),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: params.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: slot.status.as_entire_binding(),
                },
            ],
        });
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(&slot.upload, 0, &slot.input, 0, padded);
        enc.copy_buffer_to_buffer(&slot.upload, padded, &slot.status, 0, 4);
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            let (x, y) = self.grid(l.invocations);
            pass.dispatch_workgroups(x, y, 1);
            if let Some(p) = &second {
                pass.set_pipeline(p);
                pass.dispatch_workgroups(x, y, 1);
            }
        }
        enc.copy_buffer_to_buffer(&slot.output, 0, &slot.readback, 0, out_bytes);
        enc.copy_buffer_to_buffer(&slot.status, 0, &slot.readback, out_bytes, 4);
        let submission = self.queue.submit([enc.finish()]);
        let (tx, read) = mpsc::channel();
        slot.readback
            .map_async(wgpu::MapMode::Read, 0..out_bytes + 4, move |r| {
                let _ = tx.send(r);
            });
        let (tx, upload) = mpsc::channel();
        slot.upload.map_async(wgpu::MapMode::Write, .., move |r| {
            let _ = tx.send(r);
        });
        scope.check(&op)?;
        Ok(InFlight {
            chunk,
            out_len,
            submission,
            read,
            upload,
        })
    }

    /// Waits for `f`, hands its output to `sink`, and leaves its slot idle
    /// (upload mapped, read-back unmapped).
    fn finish(
        &self,
        slot: &Slot,
        f: InFlight,
        sink: &mut impl FnMut(usize, &[u8]),
    ) -> Result<Option<(usize, u32)>, GpuError> {
        let op = format!("reading back chunk {}", f.chunk);
        // The submission's completion fires the mapping callbacks, but on
        // whichever thread polls: another thread's poll may have taken the
        // callback and not yet run it when ours returns. So wait on the
        // channel, polling again now and then, rather than expect the
        // answer the moment the poll returns.
        let wait = |rx: &mpsc::Receiver<MapResult>| {
            let mut waited = std::time::Duration::ZERO;
            let step = std::time::Duration::from_millis(100);
            loop {
                self.device
                    .poll(wgpu::PollType::Wait {
                        submission_index: Some(f.submission.clone()),
                        timeout: None,
                    })
                    .map_err(|e| runtime(&op, e.to_string()))?;
                match rx.recv_timeout(step) {
                    Ok(r) => return r.map_err(|e| runtime(&op, e.to_string())),
                    Err(mpsc::RecvTimeoutError::Timeout) if waited < MAP_PATIENCE => waited += step,
                    Err(_) => return Err(runtime(&op, "the mapping callback never ran".into())),
                }
            }
        };
        wait(&f.read)?;
        wait(&f.upload)?;
        self.take_uncaptured(&op)?;
        let out_bytes = (f.out_len as u64).next_multiple_of(4).max(4);
        let status = {
            let view = slot
                .readback
                .get_mapped_range(0..out_bytes + 4)
                .map_err(|e| runtime(&op, e.to_string()))?;
            sink(f.chunk, &view[..f.out_len]);
            let s = &view[out_bytes as usize..];
            u32::from_le_bytes([s[0], s[1], s[2], s[3]])
        };
        slot.readback.unmap();
        Ok((status != u32::MAX).then_some((f.chunk, status)))
    }
}

/// The first `size` bytes of `buffer` as a binding.
fn sized(buffer: &wgpu::Buffer, size: u64) -> wgpu::BindingResource<'_> {
    wgpu::BindingResource::Buffer(wgpu::BufferBinding {
        buffer,
        offset: 0,
        size: wgpu::BufferSize::new(size),
    })
}

fn runtime(op: &str, reason: String) -> GpuError {
    GpuError::Runtime {
        op: op.to_string(),
        reason,
    }
}

/// `dst.copy_from_slice(src)`, split over rayon's threads when large.
fn par_write(mut dst: WriteOnly<'_, [u8]>, src: &[u8]) {
    assert_eq!(dst.len(), src.len());
    if src.len() < 2 * PAR_COPY {
        dst.copy_from_slice(src);
        return;
    }
    /// The mapped range's start, shared by the threads that fill it.
    #[derive(Clone, Copy)]
    struct Base(std::ptr::NonNull<u8>);
    // SAFETY: the pointer is only written through, at disjoint ranges.
    unsafe impl Send for Base {}
    unsafe impl Sync for Base {}
    impl Base {
        // A method, so that closures capture the whole `Base` (Send), not
        // its pointer field.
        fn ptr(self) -> *mut u8 {
            self.0.as_ptr()
        }
    }
    let base = Base(dst.as_raw_element_ptr());
    src.par_chunks(PAR_COPY).enumerate().for_each(|(i, s)| {
        // SAFETY: `dst` holds `src.len()` writable bytes and outlives this
        // loop; piece `i` covers bytes [i * PAR_COPY, i * PAR_COPY +
        // s.len()) of it, disjoint from every other piece and from `src`
        // (mapped GPU memory against host memory).
        unsafe { std::ptr::copy_nonoverlapping(s.as_ptr(), base.ptr().add(i * PAR_COPY), s.len()) }
    });
}

/// `dst.copy_from_slice(src)`, split over rayon's threads when large.
pub(crate) fn par_copy(dst: &mut [u8], src: &[u8]) {
    if src.len() < 2 * PAR_COPY {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(PAR_COPY)
        .zip(src.par_chunks(PAR_COPY))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

//! A batch built once and replayed with new input contents gives what a fresh batch gives,
//! and the pool buffers it uses are not lent to anyone else meanwhile.

use sd_kernels::reference::Tolerance;
use sd_kernels::{Batch, DType, Tensor, ops};

use crate::common::*;

/// Records `y = (a + b) * b` through a pooled intermediate that goes back to the pool while
/// the batch still records.
fn add_mul(batch: &mut Batch<'_>, a: &Tensor, b: &Tensor, y: &Tensor) {
    let sum = batch
        .context()
        .empty(y.shape(), DType::F32)
        .expect("allocate");
    ops::add(batch, a, b, &sum).expect("record");
    ops::mul(batch, &sum, b, y).expect("record");
}

#[test]
fn a_recorded_batch_replays_with_new_inputs_and_keeps_its_buffers() {
    let ctx = native();
    let len = 1000;
    let mut rng = rng(990);
    let (a, b) = (random(&mut rng, len, 2.0), random(&mut rng, len, 2.0));
    let (ag, bg) = (upload(ctx, &a, &[len]), upload(ctx, &b, &[len]));
    let y = poisoned(ctx, &[len]);
    let mut batch = ctx.batch();
    add_mul(&mut batch, &ag, &bg, &y);
    let recorded = pollster::block_on(batch.finish_recording()).expect("finish");
    assert_eq!(recorded.dispatches(), 2);
    // A tensor of the intermediate's size allocated now must not be the intermediate.
    let bystander = ctx.empty(&[len], DType::F32).expect("allocate");
    ctx.fill_f32(&bystander, 7.0).expect("fill");

    for round in 0..3 {
        let a: Vec<f32> = random(&mut rng, len, 3.0);
        let b: Vec<f32> = random(&mut rng, len, 3.0);
        ctx.write_f32(&ag, &a).expect("write a");
        ctx.write_f32(&bg, &b).expect("write b");
        let mut batch = ctx.batch();
        batch.replay(&recorded);
        pollster::block_on(batch.submit()).expect("submit");
        let got = pollster::block_on(ctx.read_f32(&y)).expect("read");
        let want: Vec<f32> = a.iter().zip(&b).map(|(a, b)| (a + b) * b).collect();
        assert_close(
            &format!("replay {round}"),
            &got,
            &want,
            Tolerance {
                abs: 1e-6,
                rel: 2e-6,
            },
        );
        let untouched = pollster::block_on(ctx.read_f32(&bystander)).expect("read");
        assert!(
            untouched.iter().all(|&v| v == 7.0),
            "replay {round} wrote a lent buffer"
        );
    }
}

/// A buffer given back while one thread records is not lent to another thread before that
/// batch ends: here thread B allocates while thread A's batch, which used and dropped an
/// intermediate of the same size, is still recording; A's batch is then kept and replayed,
/// and must never write B's tensor.
#[test]
fn a_buffer_freed_while_recording_is_not_lent_to_another_thread() {
    let ctx = native();
    let len = 777;
    let (a, b) = (vec![1.5; len], vec![2.0; len]);
    let (ag, bg) = (upload(ctx, &a, &[len]), upload(ctx, &b, &[len]));
    let y = poisoned(ctx, &[len]);
    let mut batch = ctx.batch();
    add_mul(&mut batch, &ag, &bg, &y);
    let other = std::thread::scope(|s| {
        s.spawn(|| {
            let t = ctx.empty(&[len], DType::F32).expect("allocate");
            ctx.fill_f32(&t, 7.0).expect("fill");
            t
        })
        .join()
        .expect("no panic")
    });
    let recorded = pollster::block_on(batch.finish_recording()).expect("finish");
    for round in 0..2 {
        let mut batch = ctx.batch();
        batch.replay(&recorded);
        pollster::block_on(batch.submit()).expect("submit");
        let got = pollster::block_on(ctx.read_f32(&y)).expect("read");
        assert!(
            got.iter().all(|&v| v == 7.0),
            "round {round}: y = (a + b) * b"
        );
        let untouched = pollster::block_on(ctx.read_f32(&other)).expect("read");
        assert!(
            untouched.iter().all(|&v| v == 7.0),
            "round {round}: the replay wrote the other thread's tensor"
        );
    }
}

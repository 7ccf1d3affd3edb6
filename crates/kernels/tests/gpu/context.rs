use sd_kernels::{DType, KernelError};

use crate::common::*;

#[test]
fn the_adapter_is_the_expected_one_and_reports_itself() {
    let ctx = native();
    let info = ctx.adapter_info();
    assert!(!info.name.is_empty());
    assert!(ctx.describe().contains(&info.name));
    assert!(
        !packed().native_f16(),
        "the packed context must not read f16 natively"
    );
}

#[test]
fn a_binding_over_the_limit_is_a_typed_error() {
    let ctx = native();
    let max = ctx.limits().max_storage_buffer_binding_size;
    let elements = (max / 4 + 256) as usize;
    let big = ctx
        .empty(&[elements], DType::F32)
        .expect("a buffer under max_buffer_size");
    let y = ctx.empty(&[elements], DType::F32).expect("allocate");
    let mut batch = ctx.batch();
    match sd_kernels::ops::scale(&mut batch, &big, 2.0, &y) {
        Err(KernelError::Limit {
            name,
            needed,
            max: limit,
        }) => {
            assert_eq!(name, "max_storage_buffer_binding_size");
            assert!(needed > limit);
        }
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn a_buffer_over_the_limit_is_a_typed_error() {
    let ctx = native();
    let too_many = (ctx.limits().max_buffer_size / 4 + 1) as usize;
    match ctx.empty(&[too_many], DType::F32) {
        Err(KernelError::Limit {
            name: "max_buffer_size",
            ..
        }) => {}
        other => panic!("expected a limit error, got {other:?}"),
    }
}

#[test]
fn pooled_buffers_are_reused_and_pipelines_cached() {
    let ctx = packed();
    let x = upload(ctx, &[1.0, 2.0, 3.0], &[3]);
    let shape = [1234usize, 3];
    drop(ctx.empty(&shape, DType::F32).expect("allocate"));
    let before = ctx.pool_stats();
    assert!(before.free_buffers >= 1);
    let reused = ctx.empty(&shape, DType::F32).expect("allocate");
    assert_eq!(
        ctx.pool_stats().free_buffers,
        before.free_buffers - 1,
        "the idle buffer was taken"
    );
    drop(reused);
    let y = poisoned(ctx, &[3]);
    run(ctx, &y, |b| {
        sd_kernels::ops::scale(b, &x, 2.0, &y).expect("record")
    });
    let compiled = ctx.cached_pipelines();
    let got = run(ctx, &y, |b| {
        sd_kernels::ops::scale(b, &x, 3.0, &y).expect("record")
    });
    assert_eq!(got, [3.0, 6.0, 9.0]);
    assert_eq!(
        ctx.cached_pipelines(),
        compiled,
        "the second run compiled nothing"
    );
}

#[test]
fn a_disposed_device_reports_loss_instead_of_panicking() {
    let ctx = pollster::block_on(sd_kernels::GpuContext::new(
        sd_kernels::ContextOptions::from_env().expect("valid environment"),
    ))
    .expect("adapter");
    let x = ctx.upload_f32(&[1.0, 2.0], &[2]).expect("upload");
    let y = ctx.empty(&[2], DType::F32).expect("allocate");
    ctx.dispose();
    let mut batch = ctx.batch();
    sd_kernels::ops::scale(&mut batch, &x, 2.0, &y).expect("recording needs no device");
    let submitted = pollster::block_on(batch.submit());
    let read = pollster::block_on(ctx.read_f32(&y));
    assert!(
        matches!(submitted, Err(KernelError::DeviceLost(_)))
            || matches!(read, Err(KernelError::DeviceLost(_))),
        "submit: {submitted:?}, read: {read:?}"
    );
}

#[test]
fn copies_between_dispatches_keep_their_order() {
    let ctx = native();
    let x = upload(ctx, &[1.0, 2.0, 3.0, 4.0, 5.0], &[5]);
    let doubled = poisoned(ctx, &[5]);
    let y = poisoned(ctx, &[4]);
    let mut batch = ctx.batch();
    sd_kernels::ops::scale(&mut batch, &x, 2.0, &doubled).expect("record");
    batch.copy_f32(&doubled, 1, &y, 0, 3).expect("in range");
    batch.copy_f32(&x, 0, &y, 3, 1).expect("in range");
    // A dispatch after the copies sees them: y = y * 10.
    let z = poisoned(ctx, &[4]);
    sd_kernels::ops::scale(&mut batch, &y, 10.0, &z).expect("record");
    assert!(
        batch.copy_f32(&x, 3, &y, 0, 3).is_err(),
        "a copy past the end is refused"
    );
    pollster::block_on(batch.submit()).expect("submit");
    let got = pollster::block_on(ctx.read_f32(&z)).expect("read");
    assert_eq!(got, [40.0, 60.0, 80.0, 10.0]);
}

/// A profiled batch computes what `submit` would, gives every command a time (0 for a copy
/// under timestamps), and `work()` counts its submission and dispatches.
#[test]
fn a_profiled_batch_times_every_command_and_is_counted() {
    // A context of its own: the other tests' work would show in the counts.
    let ctx = pollster::block_on(sd_kernels::GpuContext::new(
        sd_kernels::ContextOptions::for_tests().expect("valid environment"),
    ))
    .expect("adapter");
    let x = ctx.upload_f32(&[1.0, 2.0, 3.0, 4.0], &[4]).expect("upload");
    let doubled = poisoned(&ctx, &[4]);
    let copied = poisoned(&ctx, &[4]);
    let z = poisoned(&ctx, &[4]);
    let before = ctx.work();
    let mut batch = ctx.batch();
    sd_kernels::ops::scale(&mut batch, &x, 2.0, &doubled).expect("record");
    batch
        .copy_f32(&doubled, 0, &copied, 0, 4)
        .expect("in range");
    sd_kernels::ops::scale(&mut batch, &copied, 10.0, &z).expect("record");
    let profile = pollster::block_on(batch.submit_profiled()).expect("profiled submit");
    let work = ctx.work() - before;
    assert_eq!(profile.seconds.len(), 3, "one time per command");
    assert!(
        profile.seconds.iter().all(|s| s.is_finite() && *s >= 0.0),
        "{profile:?}"
    );
    match profile.timing {
        sd_kernels::Timing::Timestamps => {
            assert_eq!(profile.seconds[1], 0.0, "a copy is not timed");
            assert_eq!((work.submissions, work.dispatches), (1, 2), "{work:?}");
        }
        sd_kernels::Timing::SeparateSubmissions => {
            assert_eq!((work.submissions, work.dispatches), (3, 2), "{work:?}");
        }
    }
    let got = pollster::block_on(ctx.read_f32(&z)).expect("read");
    assert_eq!(got, [20.0, 40.0, 60.0, 80.0]);
    // z, and the resolved timestamps where there are any.
    let readbacks = 1 + u64::from(profile.timing == sd_kernels::Timing::Timestamps);
    assert_eq!((ctx.work() - before).readbacks, readbacks);
}

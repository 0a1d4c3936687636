/work/main/bench/noop/target/wasm32-wasip1/release/noop.wasm: /work/main/bench/noop/src/main.rs

/work/main/bench/noop/target/wasm32-wasip1/release/deps/noop-917609689753f818.d: src/main.rs

/work/main/bench/noop/target/wasm32-wasip1/release/deps/noop-917609689753f818.wasm: src/main.rs

src/main.rs:

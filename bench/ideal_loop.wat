(module
  (func (export "run") (result i64)
    (local $i i64) (local $s i64)
    (local.set $i (i64.const 1))
    (loop $top
      (local.set $s (i64.add (local.get $s)
                             (i64.rem_s (i64.mul (local.get $i) (local.get $i)) (i64.const 7))))
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $top (i64.le_s (local.get $i) (i64.const 10000000))))
    (local.get $s)))

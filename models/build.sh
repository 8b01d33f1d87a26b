#!/usr/bin/env bash
# Rebuild models/ from plant recordings (seeded, deterministic). See models/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
REC=build/recordings
mkdir -p "$REC"
for s in 1 2 3 4 5 6; do
  .venv/bin/python -m simulator --pumps 2 --seed $s --hours 48 --sample-period 1 --record "$REC/normal-s$s.csv"
done
for s in 101 102 103 104 105 106; do
  .venv/bin/python -m simulator --pumps 2 --seed $s --hours 48 --sample-period 1 --record "$REC/check-s$s.csv"
done
# the same seeds with the agent's load shifts (speed setpoints through the PLC API, bench/loadshift.py:
# every 3 h a move the pump-energy rule can make, unloads to any speed and both pumps anywhere in the
# PLC's range among them): the operating envelope op-pump and seq-pump must know
for s in 1 2 3 4 5 6; do
  .venv/bin/python -m bench.loadshift --seed $s --hours 48 --out "$REC/shift-s$s.csv"
done
# What both station models read: the fault-free fit and check recordings, and the same roles.
NORMAL=() CHECK=()
for s in 1 2 3 4 5 6; do NORMAL+=(--csv "$REC/normal-s$s.csv"); done
for s in 101 102 103 104 105 106; do CHECK+=(--check "$REC/check-s$s.csv"); done
ROLES=(
  --role 'speed:rpm:0:3000:{asset}.Speed'
  --role 'flow:m3/h:0:300:{asset}.Flow'
  --role 'suction_pressure:bar:-1:3:{asset}.SuctionPressure'
  --role 'discharge_pressure:bar:0:10:{asset}.DischargePressure'
  --role 'motor_current:A:0:60:{asset}.MotorCurrent'
  --role 'motor_power:kW:0:30:{asset}.MotorPower'
  --role 'winding_temperature:°C:0:150:{asset}.WindingTemp'
  --role 'bearing_temperature:°C:0:150:{asset}.BearingTemp'
  --role 'vibration:mm/s:0:25:{asset}.Vibration'
  --role 'vibration_1x:mm/s:0:25:{asset}.Vib1x'
  --role 'vibration_2x:mm/s:0:25:{asset}.Vib2x'
  --role 'vibration_bearing:mm/s:0:25:{asset}.VibBearing'
  --role 'vibration_hf:mm/s:0:25:{asset}.VibHF'
  --role 'ambient_temperature:°C:-40:60:Station.AmbientTemp'
)
.venv/bin/python -m export.pca_baseline \
  --out models/pca-pump --name pca-pump --version 1 \
  "${NORMAL[@]}" \
  "${CHECK[@]}" --asset Pump1 --asset Pump2 \
  "${ROLES[@]}" \
  --period 1 --window 60 --stride 10 --stats mean,std \
  --variance 0.95 --false-alarm-rate 3e-4 --calibration-fraction 0.3 --on-delay 3 \
  --provenance 'recordings=python -m simulator --pumps 2 --hours 48 --sample-period 1, fault-free, seeds 1-6 (fit), 101-106 (check)'
# The demo's anomaly model: a 1-D CNN over the window conditioned on speed, flow and the speed's
# 30 min exponentially weighted mean (speed_history, bound to the
# speed tag, --ewma: the heat the last hour's load left in winding and bearing, which a 60 s
# window cannot see; the agent computes it from the stream) (export/sequence.py), trained on the
# fault-free days 1-3 and the load-shift days 1-6 (the envelope of the agent's own moves: with
# only 1-3 a carrier at 2,000-2,100 rpm beside a pump near its zero-flow speed still alerted),
# thresholds calibrated through the agent's replay for 0.5 false alerts per pump-day with a 70 s
# on-delay (the window and a frame; with 30 s the detection is faster but, calibrated on short
# days, it alerts twice as often after moves: models/README.md) on days it never trained on
# (103-106, recorded the same way, calibrate v5 below)
for s in 101 102 103 104 105 106; do
  .venv/bin/python -m bench.loadshift --seed $s --hours 24 --out "$REC/shift-s$s.csv"
done
# the fault day of the distillation gate (below: every fault kind twice, 45 min each, 2 h apart)
FAULTS=() i=0
for rep in 1 2; do
  for k in bearing_wear cavitation imbalance motor_electrical valve_blockage sensor_stuck sensor_drift \
           sensor_spike sensor_dropout; do
    extra=""; [ "$k" = bearing_wear ] && extra=",time_to_failure=45min"
    FAULTS+=(--fault "$((1 + i % 2)):$k@$((60 + 120 * i))min,duration=45min$extra"); i=$((i + 1))
  done
done
.venv/bin/python -m simulator --pumps 2 --seed 301 --hours 37 --sample-period 1 "${FAULTS[@]}" \
  --record "$REC/faults-s301.csv"
.venv/bin/python -m export.cli sequence \
  --csv "$REC/normal-s1.csv" --csv "$REC/normal-s2.csv" --csv "$REC/normal-s3.csv" \
  --csv "$REC/shift-s1.csv" --csv "$REC/shift-s2.csv" --csv "$REC/shift-s3.csv" \
  --csv "$REC/shift-s4.csv" --csv "$REC/shift-s5.csv" --csv "$REC/shift-s6.csv" \
  --calibrate "$REC/check-s101.csv" --calibrate "$REC/shift-s101.csv" --calibrate "$REC/shift-s102.csv" \
  --asset Pump1 --asset Pump2 "${ROLES[@]}" --role 'speed_history:rpm:0:3000:{asset}.Speed' \
  --operating speed --operating flow --operating speed_history \
  --ewma speed_history=1800 \
  --train-stride 20 --on-delay 70 --false-alerts-per-day 0.5 --epochs 12 \
  --score-ensemble 2 --vote min \
  --out models/seq-pump --name seq-pump --version 4 --key export/keys/dev-ed25519.pem
# v5: that graph unchanged (model.onnx byte for byte), its threshold recalibrated through the agent's
# replay for 0.1 false alerts per pump-day on 16 pump-days (check-s101, shift-s101..s106): fewer alerts
# after setpoint changes and false alerts per pump-day on the validation days at a slower valve
# blockage (models/README.md, seq-pump: "A lower false-alert target, calibrated on more days")
CALIB=("$REC/check-s101.csv")
for s in 101 102 103 104 105 106; do CALIB+=("$REC/shift-s$s.csv"); done
.venv/bin/python -m export.cli recalibrate models/seq-pump --calibrate "${CALIB[@]}" \
  --false-alerts-per-day 0.1 --version 5 --key export/keys/dev-ed25519.pem --out models/seq-pump
# v6 candidates (8 Dec; models/seq-pump-candidates.md has the rules and commands): days with low-carrier
# holds (bench.loadshift --low-carrier 0.5), a 5 min speed mean, every training window (--max-windows),
# four-member ensembles, the header pressure or the tank level as operating inputs: none passed its
# rule with a second training seed (models/README.md, seq-pump: "Both hypotheses tried"); v5 stays.
# Distillation was tried on these recordings' predecessors and lost its gate (models/README.md):
# add --teacher-channels 40 --teacher-epochs 20 --channels 24 --prune 0.66 --finetune-epochs 12
# --seeds 3 --validate "$REC/faults-s301.csv" --label Pump1=pump1_fault_code
# --label Pump2=pump2_fault_code to run it again (the gate's loser does not ship).
# With --teacher-ensemble 3 (three such teachers, their targets averaged) on these recordings it
# lost again: distilled 0.843 ± 0.074 against scratch 0.900 ± 0.049 (t = -1.12; models/README.md).
# v4 itself as the teacher (7 Dec): replace --epochs 12 --score-ensemble 2 --vote min with
# --teacher-channels 16 --teacher-epochs 12 --teacher-ensemble 2 --teacher-vote min --channels 24
# --epochs 8 --prune 0.66 --finetune-epochs 4 --seeds 3 --validate "$REC/faults-s301.csv"
# --label Pump1=pump1_fault_code --label Pump2=pump2_fault_code --every-graph build/seqdistill/graphs
# --distillation distilled, then python -m bench.seqdistill --distilled build/seqdistill/graphs/distilled-*
# --scratch build/seqdistill/graphs/scratch-*: it lost the pre-registered gate on the validation days
# (alerts after 64 changes: distilled 5.67 ± 0.58, scratch 4.00 ± 1.00; models/README.md).
# With --finetune-epochs 12 (scratch then 20 epochs) it lost again: 4.33 ± 0.58 against 4.67 ± 2.89
# (0.20 SE; the drift mostly won back: 7.6-17.5 min; models/README.md).
# With --seeds 6 (the same flags), judged once on fresh days 115-118 and fault day 303, it lost:
# 9.83 ± 4.62 alerts after 128 changes against scratch 7.50 ± 3.83 (-0.95 SE), 1.60 against 1.27
# false alerts per pump-day; v4 there 9 and 1.12 (models/README.md).
# The former anomaly model: T^2/SPE of what speed and flow do not explain (export/conditioned.py)
.venv/bin/python -m export.pca_baseline \
  --out models/op-pump --name op-pump --version 1 \
  "${NORMAL[@]}" \
  --csv "$REC/shift-s1.csv" --csv "$REC/shift-s2.csv" --csv "$REC/shift-s3.csv" \
  --csv "$REC/shift-s4.csv" --csv "$REC/shift-s5.csv" --csv "$REC/shift-s6.csv" \
  "${CHECK[@]}" --asset Pump1 --asset Pump2 \
  "${ROLES[@]}" \
  --operating speed --operating flow \
  --period 1 --window 60 --stride 10 --stats mean,std,last \
  --false-alarm-rate 3e-4 --calibration-fraction 0.3 --on-delay 3 \
  --provenance 'recordings=python -m simulator --pumps 2 --hours 48 --sample-period 1, fault-free, seeds 1-6 (fit), 101-106 (check); python -m bench.loadshift --hours 48, seeds 1-6 (fit, load shifts)'
.venv/bin/python -m export.cli sign models/op-pump --key export/keys/dev-ed25519.pem
# Sign the PCA baseline with the development key (ed25519 is deterministic: same file each time),
# then train, compress, gate, sign the students (export/README.md).
.venv/bin/python -m export.cli sign models/pca-pump --key export/keys/dev-ed25519.pem
# fault-mlp from the teachers' chain (21 labelled days, synthetic frozen and drifted sensor
# windows, 6 unlabelled transfer days, a privileged teacher that also sees 7 tags' 600 s
# references, students over seeds: export/README.md, models/README.md) and rul-bearing (19
# labelled days; v1 predates the 3 added days)
.venv/bin/python -m export.cli train --config configs/export-teachers-privileged.yaml --model fault-mlp
.venv/bin/python -m export.cli train --config configs/export-teachers.yaml --model rul-bearing
# judged on holdout days the chain never read (seeds 201-206), as the agent runs them
.venv/bin/python -m bench.teachers models/fault-mlp models/rul-bearing --seeds 201-206 --out bench/results/teachers.json

// Copyright 2026 The vmrun Authors
// SPDX-License-Identifier: Apache-2.0
//! Shared helpers for vmrun's system tests (real VMs, real containers).
